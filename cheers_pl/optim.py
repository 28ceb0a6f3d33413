"""Optimiser and learning-rate schedule shared by every stage (paper recipe: AdamW, warm-up, cosine or constant)."""

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW with linear warm-up; paper: β = (0.9, 0.95), warm-up 2%, grad-clip 1.0 (in the trainer config)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_frac: float = 0.02
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio·lr) or "constant" after warm-up
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"stage.optim.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_frac < 1:
            raise ValueError(f"stage.optim.warmup_frac must be in [0, 1), got {self.warmup_frac}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"stage.optim.schedule must be 'cosine' or 'constant', got {self.schedule!r}")


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The multiplier of `cfg.lr` at `step` (0-based) of `total_steps`."""
    warmup = int(cfg.warmup_frac * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(
    named_params: list[tuple[str, nn.Parameter]], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the given parameters; no weight decay on biases, norms and 1-D parameters (standard practice)."""
    decay = [p for n, p in named_params if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in named_params if not (p.ndim >= 2 and "norm" not in n)]
    # named groups: the LR monitor logs lr-AdamW/weight_decay and lr-AdamW/no_weight_decay instead of pg1 / pg2
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "name": "weight_decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_weight_decay"},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, cfg))
    return optimizer, scheduler
