"""One-dimensional rotary position embedding (RoPE).

Tokens carry plain 1-D positions 0..N-1 (a raster scan of the image grid), so the same module serves any grid
size. Channel pairs follow the "rotate half" layout used by Qwen2/LLaMA: channel i is paired with i + D/2.

Shape legend: B batch, H heads, N tokens, D head dim.

References:
    Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", arXiv 2104.09864.
"""

import torch
from torch import nn


class RotaryEmbedding1D(nn.Module):
    """Produces cos/sin tables for 1-D positions.

    The inverse frequencies are a non-persistent float32 buffer (a constant, R9); the tables are computed per call
    from positions on the buffer's device and cast to the requested dtype.

    Args:
        head_dim: Per-head channel count D; must be even.
        theta: RoPE base (1e4 for the flow head; Qwen2.5 uses 1e6).
    """

    inv_freq: torch.Tensor

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2 != 0:
            raise ValueError(f"RoPE head_dim must be a positive even number, got head_dim={head_dim}")
        if theta <= 0:
            raise ValueError(f"RoPE theta must be positive, got theta={theta}")
        self.head_dim = head_dim
        self.theta = theta
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(
        self, positions_N: torch.Tensor | int, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(cos_ND, sin_ND)` for the given positions (or for 0..N-1 when an int N is given)."""
        if isinstance(positions_N, int):
            positions_N = torch.arange(positions_N, device=self.inv_freq.device)
        angles_NK = positions_N.to(device=self.inv_freq.device, dtype=torch.float32)[:, None] * self.inv_freq
        angles_ND = torch.cat([angles_NK, angles_NK], dim=-1)
        return angles_ND.cos().to(dtype), angles_ND.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x_BHND: torch.Tensor, cos_ND: torch.Tensor, sin_ND: torch.Tensor) -> torch.Tensor:
    """Rotates channel pairs of `x_BHND` by position-dependent angles; returns the same shape."""
    return x_BHND * cos_ND + _rotate_half(x_BHND) * sin_ND
