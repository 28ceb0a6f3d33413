"""Non-causal multi-head self-attention with grouped-query attention (GQA) and 1-D RoPE.

Shape legend: B batch, N tokens, C model width, H query heads, G key/value heads, D head dim.

References:
    Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints",
    arXiv 2305.13245.
"""

import torch
import torch.nn.functional as F
from torch import nn

from cheers_pl.model.layers.rope import apply_rope


class Attention(nn.Module):
    """Bidirectional self-attention; `num_heads / num_kv_heads` query heads share each key/value head.

    Args:
        dim: Model width C.
        num_heads: Query heads H; must divide `dim`.
        num_kv_heads: Key/value heads G; must divide `num_heads`.
        qkv_bias: Bias on the q/k/v projections (Qwen2-style); the output projection has none.
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads != 0:
            raise ValueError(f"Attention num_heads={num_heads} must be positive and divide dim={dim}")
        if num_kv_heads <= 0 or num_heads % num_kv_heads != 0:
            raise ValueError(f"Attention num_kv_heads={num_kv_heads} must be positive and divide num_heads={num_heads}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = dim // num_heads
        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=False)

    def forward(
        self,
        x_BNC: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attends over all tokens.

        Args:
            x_BNC: Input tokens.
            rope: `(cos_ND, sin_ND)` from `RotaryEmbedding1D`, applied to queries and keys; None disables RoPE.
            attn_mask: Optional boolean (True = attend) or additive mask broadcastable to B×H×N×N.

        Returns:
            Output tokens, B×N×C.
        """
        B, N, _ = x_BNC.shape
        q_BHND = self.q_proj(x_BNC).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)
        k_BGND = self.k_proj(x_BNC).view(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v_BGND = self.v_proj(x_BNC).view(B, N, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            cos_ND, sin_ND = rope
            q_BHND = apply_rope(q_BHND, cos_ND.to(q_BHND.dtype), sin_ND.to(q_BHND.dtype))
            k_BGND = apply_rope(k_BGND, cos_ND.to(k_BGND.dtype), sin_ND.to(k_BGND.dtype))
        o_BHND = F.scaled_dot_product_attention(
            q_BHND, k_BGND, v_BGND, attn_mask=attn_mask, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.o_proj(o_BHND.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
