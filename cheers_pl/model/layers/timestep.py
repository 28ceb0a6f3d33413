"""Timestep embedder: sinusoidal features of the flow time t followed by a two-layer MLP.

t ∈ [0, 1] (t = 1 is data) is multiplied by `time_scale` inside the sinusoid. Native default 1000: with the usual max
period 10⁴, raw t ∈ [0, 1] would move the low frequencies by a negligible angle, whereas 1000·t spans them as in
DDPM-style integer timesteps. The released Cheers checkpoint was trained on raw t (`time_scale=1`). Only the sinusoid
sees the scaled value; callers always pass raw t.

Shape legend: B batch, F sinusoid features, C output width.

References:
    Vaswani et al., "Attention Is All You Need", 2017 (sinusoids); Peebles & Xie, DiT, ICCV 2023 (embedder MLP).
"""

import math

import torch
from torch import nn

TIME_SCALE = 1000.0


def sinusoidal_embedding(
    t_B: torch.Tensor, dim: int, max_period: float = 10000.0, time_scale: float = TIME_SCALE
) -> torch.Tensor:
    """Float32 `[cos, sin]` features of `time_scale·t`, shape B×dim (a zero column is appended for odd dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_B.device, dtype=torch.float32) / half)
    args_BF = (time_scale * t_B.float())[:, None] * freqs[None]
    emb_BF = torch.cat([torch.cos(args_BF), torch.sin(args_BF)], dim=-1)
    if dim % 2:
        emb_BF = torch.cat([emb_BF, torch.zeros_like(emb_BF[:, :1])], dim=-1)
    return emb_BF


class TimestepEmbedder(nn.Module):
    """Sinusoid → Linear → SiLU → Linear.

    Args:
        dim: Output width C (the width of the blocks it conditions).
        freq_dim: Number of sinusoidal features F (256 as in DiT).
        time_scale: Factor on t inside the sinusoid (1000 native, 1 for the released checkpoint).
    """

    def __init__(self, dim: int, freq_dim: int = 256, time_scale: float = TIME_SCALE) -> None:
        super().__init__()
        if dim <= 0 or freq_dim <= 0:
            raise ValueError(f"TimestepEmbedder widths must be positive, got dim={dim}, freq_dim={freq_dim}")
        if time_scale <= 0:
            raise ValueError(f"TimestepEmbedder time_scale must be positive, got time_scale={time_scale}")
        self.freq_dim = freq_dim
        self.time_scale = time_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        """Embeds raw times t_B ∈ [0, 1]; returns B×C in the MLP's dtype."""
        emb_BF = sinusoidal_embedding(t_B, self.freq_dim, time_scale=self.time_scale)
        return self.mlp(emb_BF.to(self.mlp[0].weight.dtype))
