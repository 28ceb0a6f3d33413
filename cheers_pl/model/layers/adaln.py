"""Adaptive layer-norm modulation with zero initialisation (adaLN-Zero).

A conditioning vector (here the timestep embedding) is mapped to per-channel shift/scale/gate chunks by a
SiLU + linear layer whose weights start at zero, so every modulated residual branch starts as the identity.

Shape legend: B batch, N tokens, C width, E conditioning width.

References:
    Peebles & Xie, "Scalable Diffusion Models with Transformers" (DiT), ICCV 2023, §3.2.
"""

import torch
import torch.nn.functional as F
from torch import nn


def modulate(
    x_BNC: torch.Tensor, shift_BC: torch.Tensor, scale_BC: torch.Tensor, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`x·(1 + scale) + shift`, broadcast over tokens; returns B×N×C in the dtype of `x`.

    `compute_dtype` (e.g. float32, as the released Cheers code) evaluates the affine map in that dtype and casts the
    result back; None computes in the inputs' dtype.
    """
    if compute_dtype is None:
        return x_BNC * (1 + scale_BC.unsqueeze(1)) + shift_BC.unsqueeze(1)
    x, shift, scale = x_BNC.to(compute_dtype), shift_BC.to(compute_dtype), scale_BC.to(compute_dtype)
    return (x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)).to(x_BNC.dtype)


class AdaLNZero(nn.Module):
    """Maps a conditioning vector to `num_chunks` modulation vectors of width `dim`.

    Args:
        cond_dim: Conditioning width E.
        dim: Width C of each output chunk.
        num_chunks: How many chunks (6 for a DiT block: shift/scale/gate for attention and MLP; 2 for a final layer).
    """

    def __init__(self, cond_dim: int, dim: int, num_chunks: int) -> None:
        super().__init__()
        if num_chunks <= 0:
            raise ValueError(f"AdaLNZero num_chunks must be positive, got num_chunks={num_chunks}")
        self.num_chunks = num_chunks
        self.linear = nn.Linear(cond_dim, num_chunks * dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weight and bias: all chunks are zero at initialisation."""
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_BE: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Returns `num_chunks` tensors of shape B×C."""
        return self.linear(F.silu(c_BE)).chunk(self.num_chunks, dim=-1)
