"""Identity fitting (paper §2.6): SMPL-X shape + dense static offsets from a reference portrait.

    from expportrait_core.fit import FitConfig, fit_identity
    result = fit_identity(proxy, image, analyzer=analyzer, normal_map=normals, mask=mask)
    save_identity(result.identity, "me.safetensors")

See :mod:`expportrait_core.fit.core` for the stages and the camera/pose conventions.
"""
from .config import FitConfig
from .core import FitResult, fit_identity, fit_shared_identity

__all__ = ["FitConfig", "FitResult", "fit_identity", "fit_shared_identity"]
