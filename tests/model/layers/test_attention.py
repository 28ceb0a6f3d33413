import pytest
import torch

from cheers_pl.model.layers import Attention, RotaryEmbedding1D
from cheers_pl.model.layers.rope import apply_rope


def _reference(attn: Attention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Explicit softmax attention with key/value heads repeated to the query heads."""
    B, N, _ = x.shape
    H, G, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    q = apply_rope(attn.q_proj(x).view(B, N, H, D).transpose(1, 2), *rope)
    k = apply_rope(attn.k_proj(x).view(B, N, G, D).transpose(1, 2), *rope)
    v = attn.v_proj(x).view(B, N, G, D).transpose(1, 2)
    k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
    w = torch.softmax(q @ k.transpose(-1, -2) / D**0.5, dim=-1)
    return attn.o_proj((w @ v).transpose(1, 2).reshape(B, N, H * D))


@pytest.mark.parametrize("num_kv_heads", [1, 2, 4])
def test_gqa_equals_repeated_kv_attention(num_kv_heads: int):
    attn = Attention(32, num_heads=4, num_kv_heads=num_kv_heads).double()
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    rope = RotaryEmbedding1D(8)(7, dtype=torch.float64)
    y = attn(x, rope)
    assert y.shape == (2, 7, 32)
    torch.testing.assert_close(y, _reference(attn, x, rope))


def test_attention_is_non_causal_and_permutation_equivariant_without_rope():
    attn = Attention(16, num_heads=2, num_kv_heads=1)
    x = torch.randn(1, 5, 16)
    perm = torch.randperm(5)
    torch.testing.assert_close(attn(x)[:, perm], attn(x[:, perm]))
    # the first token sees later tokens (bidirectional)
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert not torch.allclose(attn(x)[:, 0], attn(x2)[:, 0])


def test_attention_rejects_bad_heads():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        Attention(32, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="num_heads=5"):
        Attention(32, num_heads=5, num_kv_heads=1)
