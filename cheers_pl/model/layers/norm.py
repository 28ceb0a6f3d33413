"""Root-mean-square layer normalisation (RMSNorm).

Normalises each token by the root mean square of its channels, computed in float32 for bf16 stability,
with an optional learnable per-channel weight (off where adaLN supplies the scale).

References:
    Zhang & Sennrich, "Root Mean Square Layer Normalization", NeurIPS 2019.
"""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension.

    Args:
        dim: Number of channels of the normalised (last) dimension.
        eps: Added to the mean square before the reciprocal square root.
        affine: Whether to learn a per-channel weight (initialised to one).
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"RMSNorm dim must be positive, got dim={dim}")
        if eps <= 0:
            raise ValueError(f"RMSNorm eps must be positive, got eps={eps}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise `x` (..., dim); returns the same shape and dtype."""
        x_f = x.float()
        y = x_f * torch.rsqrt(x_f.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        y = y.to(x.dtype)
        return y * self.weight if self.weight is not None else y

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"
