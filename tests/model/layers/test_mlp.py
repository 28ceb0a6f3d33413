import torch

from cheers_pl.model.layers import SwiGLU


def test_swiglu_shape_formula_and_grads():
    mlp = SwiGLU(8, 20)
    x = torch.randn(2, 3, 8)
    y = mlp(x)
    assert y.shape == (2, 3, 8)
    expected = mlp.down_proj(torch.nn.functional.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(y, expected)
    assert sum(p.numel() for p in mlp.parameters()) == 3 * 8 * 20
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
