"""SwiGLU feed-forward network.

`down(silu(gate(x)) * up(x))`, bias-free as in Qwen2/LLaMA.

References:
    Shazeer, "GLU Variants Improve Transformer", arXiv 2002.05202.
"""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    """Gated-SiLU MLP.

    Args:
        dim: Input and output width.
        hidden_dim: Width of the gated hidden layer.
        bias: Whether the three projections carry biases.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = False) -> None:
        super().__init__()
        if dim <= 0 or hidden_dim <= 0:
            raise ValueError(f"SwiGLU widths must be positive, got dim={dim}, hidden_dim={hidden_dim}")
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Maps (..., dim) to (..., dim)."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
