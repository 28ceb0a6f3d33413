"""Token compression: LayerNorm → pixel-unshuffle of the token grid → MLP to the LLM width (Cheers §1.1 step 5).

Optionally (`position_embedding="sincos2d"`) a fixed 2-D sine-cosine table of the compressed grid is added to the
output, so every LLM image token states its row and column. The paper's pretrained SigLIP2 tokens carry their position;
a small encoder trained only contrastively may not (the tiny preset's: a probe reads an object's region from its
semantic tokens with 0.40, chance 0.17), and the LLM's 1-D RoPE orders the image tokens but does not tell a token
its own row or column. The table has no parameters, so checkpoints are the same with it on or off.

`unshuffle_tokens` / `shuffle_tokens` are the token-sequence forms of `F.pixel_unshuffle` / `F.pixel_shuffle`
(same channel order: channel c·f² + i·f + j of low-res token (y, x) is channel c of high-res token
(y·f + i, x·f + j)); they are exact inverses and are shared with the flow head's pixel-shuffle.

Shape legend: `cheers_pl.model` (M tokens on the fine grid h·w in raster order, N = M / f² on the coarse grid,
C channels, f the (un)shuffle factor, D output width).

References:
    Cheers, arXiv 2603.12793, §3.1 (4× token compression: 2×2 unshuffle, 1024 → 256 tokens at 512 px).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cheers_pl.model.layers.timestep import sinusoidal_embedding


def _check_grid(tokens: torch.Tensor, grid_hw: tuple[int, int], name: str) -> tuple[int, int]:
    if tokens.ndim != 3:
        raise ValueError(f"{name} expects B,N,C tokens, got shape {tuple(tokens.shape)}")
    B, num_tokens, C = tokens.shape
    h, w = grid_hw
    if h * w != num_tokens:
        raise ValueError(f"{name}: grid_hw={tuple(grid_hw)} has {h * w} cells but there are N={num_tokens} tokens")
    return B, C


def unshuffle_tokens(x_BMC: torch.Tensor, grid_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """Merge each f×f block of the (h, w) token grid into one token: B,h·w,C → B,(h/f)·(w/f),C·f².

    Args:
        x_BMC: Tokens in raster order of the (h, w) grid.
        grid_hw: (h, w) of the input grid.
        factor: f; 1 returns the input unchanged.
    """
    B, C = _check_grid(x_BMC, grid_hw, "unshuffle_tokens")
    h, w = grid_hw
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"unshuffle_tokens: factor={factor} must be >= 1 and divide grid_hw={tuple(grid_hw)}")
    if factor == 1:
        return x_BMC
    x_BCHW = F.pixel_unshuffle(x_BMC.transpose(1, 2).reshape(B, C, h, w), factor)
    return x_BCHW.flatten(2).transpose(1, 2)


def shuffle_tokens(x_BNC: torch.Tensor, grid_hw: tuple[int, int], factor: int) -> torch.Tensor:
    """Split each token into an f×f block: B,h·w,C·f² → B,(h·f)·(w·f),C; exact inverse of `unshuffle_tokens`.

    Args:
        x_BNC: Tokens in raster order of the coarse (h, w) grid.
        grid_hw: (h, w) of the input (coarse) grid.
        factor: f; 1 returns the input unchanged.
    """
    B, C = _check_grid(x_BNC, grid_hw, "shuffle_tokens")
    h, w = grid_hw
    if factor < 1 or C % (factor * factor):
        raise ValueError(f"shuffle_tokens: factor={factor} must be >= 1 and factor² must divide channels C={C}")
    if factor == 1:
        return x_BNC
    x_BCHW = F.pixel_shuffle(x_BNC.transpose(1, 2).reshape(B, C, h, w), factor)
    return x_BCHW.flatten(2).transpose(1, 2)


POSITION_EMBEDDINGS = ("none", "sincos2d")


def sincos_2d(grid_hw: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position table, (h·w)×dim in raster order (as in MAE / ViT): the first half of the
    channels is the row's, the second half the column's 1-D sinusoid (`layers.timestep.sinusoidal_embedding` of the
    integer index, `[cos, sin]` at geometric frequencies). `dim` must be divisible by 4."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim={dim} must be divisible by 4")
    h, w = grid_hw
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)  # raster order
    return torch.cat([sinusoidal_embedding(index, dim // 2, time_scale=1.0) for index in (rows, cols)], dim=1)


@dataclass
class TokenCompressorConfig:
    """Configuration of `TokenCompressor`. Defaults are the tiny preset; full values in the comments."""

    in_dim: int = 128  # semantic encoder width (full: 1152)
    out_dim: int = 128  # LLM width (full: 1536)
    factor: int = 2  # 1 = no compression, 2 = the paper's 4× fewer tokens, 4 = 16×
    layer_norm_eps: float = 1e-6
    position_embedding: str = "none"  # a POSITION_EMBEDDINGS value added to the output (full: "none", as the paper)

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"position_embedding must be one of {POSITION_EMBEDDINGS}, got {self.position_embedding!r}"
            )
        if self.position_embedding == "sincos2d" and self.out_dim % 4:
            raise ValueError(f"position_embedding='sincos2d' needs out_dim divisible by 4, got {self.out_dim}")


class TokenCompressor(nn.Module):
    """LayerNorm → f×f token unshuffle → MLP (C·f² → C·f² → GELU → D) [+ fixed 2-D position table]."""

    def __init__(self, cfg: TokenCompressorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.in_dim * cfg.factor**2
        self.norm = nn.LayerNorm(cfg.in_dim, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, cfg.out_dim))

    def output_grid(self, grid_hw: tuple[int, int]) -> tuple[int, int]:
        """The compressed grid for an input grid (ValueError if the factor does not divide it)."""
        h, w = grid_hw
        f = self.cfg.factor
        if h % f or w % f:
            raise ValueError(f"compression factor={f} must divide the token grid {tuple(grid_hw)}")
        return h // f, w // f

    def forward(self, x_BMC: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Compress encoder tokens on the (h, w) grid. Returns B,(h/f)·(w/f),D."""
        if x_BMC.shape[-1] != self.cfg.in_dim:
            raise ValueError(f"TokenCompressor expects in_dim={self.cfg.in_dim} channels, got {x_BMC.shape[-1]}")
        out_BND = self.mlp(unshuffle_tokens(self.norm(x_BMC), grid_hw, self.cfg.factor))
        if self.cfg.position_embedding == "sincos2d":
            table_ND = sincos_2d(self.output_grid(grid_hw), self.cfg.out_dim)
            out_BND = out_BND + table_ND.to(device=out_BND.device, dtype=out_BND.dtype)
        return out_BND
