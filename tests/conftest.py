import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared"
TESTDATA = SHARED / "testdata"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A per-session cache for generated assets (the synthetic SMPL-X-format model)."""
    d = os.environ.get("EXPPORTRAIT_CACHE_DIR")
    if not d:
        d = str(tmp_path_factory.mktemp("expp_cache"))
        os.environ["EXPPORTRAIT_CACHE_DIR"] = d
    return Path(d)


@pytest.fixture(scope="session")
def synthetic_model_path(cache_dir):
    from expportrait_core.head.synthetic import ensure_synthetic_smplx

    return ensure_synthetic_smplx(cache_dir)


@pytest.fixture(scope="session")
def proxy(synthetic_model_path):
    from expportrait_core.head import load_head_proxy

    return load_head_proxy(synthetic_model_path)


@pytest.fixture(scope="session")
def testdata():
    if not TESTDATA.is_dir():
        pytest.skip(f"real test footage not found at {TESTDATA}")
    return TESTDATA
