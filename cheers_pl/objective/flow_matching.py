"""Rectified-flow training objective: noise, time sampling, the linear path, target velocity and loss.

Convention (DESIGN.md): `x_t = t·x1 + (1−t)·x0` with x1 data and x0 Gaussian noise, t = 1 is data, and the
network predicts the velocity `v = x1 − x0`, or (`prediction="data"`) the clean data x1, turned into the velocity
`v̂ = (x̂1 − x_t) / (1 − t)` before the loss and the sampler see it (`velocity_from_prediction`): the loss stays the
velocity MSE, but the network need not know the noise, only what the image will be (Li & He, "Back to Basics: Let
Denoising Generative Models Denoise", 2025). With a pixel decoder that maps z_t to clean-looking pixels, the noise is
hard to see through the tokenizer. Pure functions, no parameters (R3). `training_losses` is the one place
the process meets the network (in the spirit of DiT's `training_losses(model, x_start, t)`): it draws the noise,
builds `x_t`, calls the network as a function of `(x_t, t)` and scores its velocity; every stage trains through it.

Shape legend: B batch; tensors `x` have any shape (B, ...).

References:
    Liu et al., "Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified Flow", ICLR 2023;
    Esser et al., "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis" (SD3), ICML 2024
    (logit-normal sampling, shift); Cheers, arXiv 2603.12793 (loss weight λ and slot masking).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cheers_pl.objective.sampling import warp_time

T_SAMPLINGS = ("uniform", "logit_normal")
# per-sample weights of the velocity MSE: "none" (the paper), or "data": max(1 − t, gap)², which makes the weighted
# velocity MSE the MSE of the data estimate x̂1 = x_t + (1 − t)·v̂ (any prediction), so times near noise, where only
# the prompt tells what x1 is, weigh as much as times near data
LOSS_WEIGHTINGS = ("none", "data")
PREDICTIONS = ("velocity", "data")  # what the network's output means
# 1 − t is clamped at this value when a data prediction becomes a velocity (the division blows up at t = 1; JiT: 0.05)
DATA_PREDICTION_MIN_GAP = 0.05


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
    loss_weighting: str = "none"  # a `LOSS_WEIGHTINGS` value

    def __post_init__(self) -> None:
        if self.t_sampling not in T_SAMPLINGS:
            raise ValueError(f"FlowMatchingConfig.t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        if self.logit_std <= 0:
            raise ValueError(f"FlowMatchingConfig.logit_std must be positive, got {self.logit_std}")
        if self.shift <= 0:
            raise ValueError(f"FlowMatchingConfig.shift must be positive, got {self.shift}")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(
                f"FlowMatchingConfig.loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"
            )


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


def noise_like(x1: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh standard-normal x0 of the shape, device and dtype of `x1` (one draw per element)."""
    return torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)


def _expand(t_B: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    t_B = t_B.to(device=x.device, dtype=x.dtype)
    return t_B.reshape(-1, *([1] * (x.ndim - 1))) if t_B.ndim == 1 else t_B


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
    """`x_t = t·x1 + (1−t)·x0`; `t_B` is per sample (B,) or a scalar."""
    t = _expand(t_B, x1)
    return t * x1 + (1 - t) * x0


def velocity_from_prediction(pred: torch.Tensor, x_t: torch.Tensor, t_B: torch.Tensor, prediction: str) -> torch.Tensor:
    """The velocity a network output stands for: itself (`"velocity"`) or `(x̂1 − x_t) / max(1 − t, gap)` (`"data"`).

    Args:
        pred: The network output (B, ...).
        x_t: The input it saw (B, ...).
        t_B: Its flow times (B,).
        prediction: A `PREDICTIONS` value.
    """
    if prediction == "velocity":
        return pred
    if prediction != "data":
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    gap = (1 - _expand(t_B, pred)).clamp_min(DATA_PREDICTION_MIN_GAP)
    return (pred - x_t.to(pred.dtype)) / gap


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
    if v_pred.shape[0] == 0:  # no row to score (e.g. a text-only batch): a zero that keeps the graph
        return v_pred.float().sum()
    mse_B = (v_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    if weight_B is None:
        return mse_B.mean()
    w_B = weight_B.to(device=mse_B.device, dtype=mse_B.dtype)
    return (w_B * mse_B).sum() / w_B.sum().clamp_min(1e-12)


@dataclass
class FlowTerms:
    """What `training_losses` computed: the loss, the path it used and the network's whole output."""

    loss: torch.Tensor  # scalar velocity MSE (the caller applies λ)
    x0: torch.Tensor  # noise
    x_t: torch.Tensor  # the noisy input the network saw
    output: Any  # what the network returned (has `.velocity`)


def training_losses(
    network: Callable[[torch.Tensor, torch.Tensor], Any],
    x1: torch.Tensor,
    t_B: torch.Tensor,
    weight_B: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    understanding_zero_target: bool = False,
    loss_weighting: str = "none",
) -> FlowTerms:
    """Noise → `x_t` → `network(x_t, t)` → velocity loss against `x1 − x0`.

    Args:
        network: `(x_t, t_B) -> output` with `output.velocity` shaped like `x1` (the output may carry more, e.g.
            the LLM's logits of the same pass).
        x1: Clean data latents (B, ...).
        t_B: Flow times (B,); t = 1 is data (understanding inputs), t ~ `sample_t` for generation targets.
        weight_B: Per-sample loss weights (see `flow_loss`); None weighs all equally.
        x0: The noise; default a fresh draw (`noise_like`, from `generator` when given).
        understanding_zero_target: See `flow_loss`.
        loss_weighting: A `LOSS_WEIGHTINGS` value; "data" multiplies `weight_B` by max(1 − t, gap)².
    """
    if t_B.shape != x1.shape[:1]:
        raise ValueError(f"t_B must have shape ({x1.shape[0]},), got {tuple(t_B.shape)}")
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    if loss_weighting == "data" and understanding_zero_target:
        raise ValueError("loss_weighting='data' weighs generation rows; the zero-target variant weighs all slots alike")
    if loss_weighting == "data":
        gap_B = (1 - t_B.float()).clamp_min(DATA_PREDICTION_MIN_GAP).pow(2)
        weight_B = gap_B if weight_B is None else weight_B.to(gap_B) * gap_B
    x0 = noise_like(x1, generator) if x0 is None else x0.to(x1)
    x_t = interpolate(x0, x1, t_B)
    output = network(x_t, t_B.to(x1.dtype))
    loss = flow_loss(output.velocity, x0, x1, weight_B, understanding_zero_target=understanding_zero_target)
    return FlowTerms(loss=loss, x0=x0, x_t=x_t, output=output)
