"""Rectified-flow training objective: time sampling, the linear path, target velocity and loss.

Convention (DESIGN.md): `x_t = t·x1 + (1−t)·x0` with x1 data and x0 Gaussian noise, t = 1 is data, and the
network predicts the velocity `v = x1 − x0`. Pure functions, no parameters (R3).

Shape legend: B batch; tensors `x` have any shape (B, ...).

References:
    Liu et al., "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow", ICLR 2023;
    Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3), ICML 2024
    (logit-normal sampling, shift); Cheers, arXiv 2603.12793 (loss weight λ and slot masking).
"""

from dataclasses import dataclass

import torch

from cheers_pl.objective.sampling import warp_time

T_SAMPLINGS = ("uniform", "logit_normal")


@dataclass
class FlowMatchingConfig:
    """How training times are drawn.

    `shift` s follows SD3: it acts on the noise level σ = 1 − t as σ' = s·σ / (1 + (s−1)·σ), so s > 1 puts more
    mass near noise (t → 0). In terms of t this is `warp_time(t, 1/s)`; s = 1 is no shift.
    """

    t_sampling: str = "uniform"  # "uniform" | "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"FlowMatchingConfig.t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.logit_std <= 0:
            raise ValueError(f"FlowMatchingConfig.logit_std must be positive, got {self.logit_std}")
        if self.shift <= 0:
            raise ValueError(f"FlowMatchingConfig.shift must be positive, got {self.shift}")


def sample_t(
    batch: int,
    cfg: FlowMatchingConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draws `batch` float32 training times in [0, 1) (logit-normal: in (0, 1)), drawn on the generator's device."""
    draw_device = generator.device if generator is not None else device
    if cfg.t_sampling == "uniform":
        t_B = torch.rand(batch, generator=generator, device=draw_device)
    else:
        eps_B = torch.randn(batch, generator=generator, device=draw_device)
        t_B = torch.sigmoid(cfg.logit_mean + cfg.logit_std * eps_B)
    if cfg.shift != 1.0:
        t_B = warp_time(t_B, 1.0 / cfg.shift)
    return t_B.to(device if device is not None else t_B.device)


def _expand(t_B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t_B = t_B.to(device=x.device, dtype=x.dtype)
    return t_B.reshape(-1, *([1] * (x.ndim - 1))) if t_B.ndim == 1 else t_B


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """`x_t = t·x1 + (1−t)·x0`; `t_B` is per sample (B,) or a scalar."""
    t = _expand(t_B, x1)
    return t * x1 + (1 - t) * x0


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """`v = x1 − x0`, the constant velocity of the straight path."""
    return x1 - x0


def flow_loss(
    v_pred: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    weight_B: torch.Tensor | None = None,
    understanding_zero_target: bool = False,
) -> torch.Tensor:
    """Velocity MSE, a scalar.

    Args:
        v_pred: Predicted velocity (B, ...).
        x0: Noise (B, ...).
        x1: Data (B, ...).
        weight_B: Per-sample weights marking generation slots (bool or float, 0 = understanding slot). The loss
            is the weighted mean of per-sample MSEs, so understanding slots contribute nothing; with no
            generation slot in the batch it is a zero that still depends on `v_pred`. None weights all equally.
        understanding_zero_target: Reproduce the official code instead: every slot is averaged with equal weight
            and slots with weight 0 (understanding inputs, clean at t = 1) get the target velocity 0.

    Returns:
        The scalar loss (the caller applies λ).
    """
    target = target_velocity(x0, x1)
    if weight_B is not None and weight_B.shape != v_pred.shape[:1]:
        raise ValueError(f"weight_B must have shape ({v_pred.shape[0]},), got {tuple(weight_B.shape)}")
    if understanding_zero_target and weight_B is not None:
        target = target * _expand((weight_B > 0).to(target.dtype), target)
        weight_B = None
    mse_B = (v_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weight_B is None:
        return mse_B.mean()
    w_B = weight_B.to(device=mse_B.device, dtype=mse_B.dtype)
    return (w_B * mse_B).sum() / w_B.sum().clamp_min(1e-12)
