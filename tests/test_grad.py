"""Autograd inside ComfyUI's inference mode (ComfyUI 0.8.0 runs every node in torch.inference_mode())."""
import torch

from expportrait_core.grad import autograd_enabled


@autograd_enabled
def _grad_of_square(x: torch.Tensor) -> torch.Tensor:
    p = x.clone().requires_grad_(True)
    (p ** 2).sum().backward()
    return p.grad


def test_autograd_enabled_works_under_inference_mode_and_no_grad():
    x = torch.tensor([1.0, -2.0, 3.0])
    for ctx in (torch.inference_mode, torch.no_grad):
        with ctx():
            g = _grad_of_square(x)
            assert torch.equal(g, 2 * x)
            assert torch.is_inference_mode_enabled() == (ctx is torch.inference_mode)  # restored


def test_every_pack_node_runs_outside_inference_mode():
    import nodes

    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        fn = getattr(cls, cls.FUNCTION)
        assert getattr(fn, "_expportrait_autograd", False), f"{name}.{cls.FUNCTION} is not wrapped"
    # a head proxy built by the loader node inside inference mode is made of ordinary tensors
    loader = nodes.NODE_CLASS_MAPPINGS["ExpPortraitLoadSMPLX"]
    synthetic = loader.INPUT_TYPES()["required"]["model_name"][0][0]
    with torch.inference_mode():
        proxy = getattr(loader(), loader.FUNCTION)(model_name=synthetic, num_expression=100, subdivision="0",
                                                   device="cpu")[0]
    tensors = [v for v in vars(proxy).values() if isinstance(v, torch.Tensor)]
    if isinstance(proxy, torch.nn.Module):
        tensors += list(proxy.buffers()) + list(proxy.parameters())
    assert tensors and not any(t.is_inference() for t in tensors)
