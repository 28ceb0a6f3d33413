import pytest
import torch

from cheers_pl.model.layers import RotaryEmbedding1D, apply_rope


def test_rope_dot_product_depends_only_on_offset():
    rope = RotaryEmbedding1D(16, theta=100.0)
    q = torch.randn(16, dtype=torch.float64)
    k = torch.randn(16, dtype=torch.float64)
    cos, sin = rope(torch.arange(40), dtype=torch.float64)

    def score(m: int, n: int) -> torch.Tensor:
        return apply_rope(q, cos[m], sin[m]) @ apply_rope(k, cos[n], sin[n])

    torch.testing.assert_close(score(3, 10), score(20, 27), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score(0, 5), score(30, 35), rtol=1e-5, atol=1e-5)
    assert (score(3, 10) - score(3, 11)).abs() > 1e-2


def test_rope_preserves_norm_and_position_zero_is_identity():
    rope = RotaryEmbedding1D(8)
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope(5)
    y = apply_rope(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])
    assert "inv_freq" not in rope.state_dict()


def test_rope_rejects_odd_head_dim():
    with pytest.raises(ValueError, match="head_dim"):
        RotaryEmbedding1D(7)
