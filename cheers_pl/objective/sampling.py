"""ODE samplers for flow matching: time grids, Euler and Heun integrators, classifier-free guidance.

Every function takes a velocity function `fn(x_t, t_B) -> v` (STYLE.md R3) and integrates from t = 0 (noise x0)
to t = 1 (data). The networks never appear here.

Time grids (`TIME_GRIDS`, picked by `SamplingConfig.time_grid`): `native` is `num_steps + 1` warped points from t0 to 1
(`num_steps` steps ending exactly at t = 1); `official` is the released Cheers sampler's: `n` warped points
`linspace(t0, 1, n)` followed by one extra Euler step of size 1/n taken at t = 1, i.e. the grid ends at 1 + 1/n (n
velocity evaluations, the last one at t = 1). With t0 > 0 (zero-shot editing) both use n = int(num_steps·(1 − t0))
steps, as the released code does.

Shape legend: B batch; `x` has any shape (B, ...).

References:
    Lipman et al., "Flow Matching for Generative Modeling", ICLR 2023; Karras et al., "Elucidating the Design
    Space of Diffusion-Based Generative Models", NeurIPS 2022 (Heun); Ho & Salimans, "Classifier-Free Diffusion
    Guidance", 2022; Cheers, arXiv 2603.12793 (time warp α).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    """Text-to-image sampling settings, the one place of their defaults (paper: 80 Euler steps, guidance 9.5,
    α = 0.5); configs (`stage.sampling`) state only what differs."""

    num_steps: int = 80
    guidance_scale: float = 9.5
    alpha: float = 0.5
    sampler: str = "euler"  # a key of SAMPLERS
    time_grid: str = "native"  # a key of TIME_GRIDS ("official": the released sampler's grid, extra step at t = 1)
    # the guidance's unconditional prompt: "prompt" blanks the user's prompt text to `<no_mean>`; "all_text" blanks
    # every token but `<im_start>`, `<im_end>` and the image positions (the released code)
    unconditional: str = "prompt"

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"sampling.num_steps must be >= 1, got {self.num_steps}")
        if self.alpha <= 0:
            raise ValueError(f"sampling.alpha must be > 0, got {self.alpha}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampling.sampler must be one of {sorted(SAMPLERS)}, got {self.sampler!r}")
        if self.time_grid not in TIME_GRIDS:
            raise ValueError(f"sampling.time_grid must be one of {TIME_GRIDS}, got {self.time_grid!r}")
        if self.unconditional not in UNCONDITIONAL_PROMPTS:
            raise ValueError(
                f"sampling.unconditional must be one of {UNCONDITIONAL_PROMPTS}, got {self.unconditional!r}"
            )


TIME_GRIDS = ("native", "official")
UNCONDITIONAL_PROMPTS = ("prompt", "all_text")
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""`callback(step, t_B, x_t, v)`, called after each velocity evaluation at the start of a step."""


def warp_time(t: torch.Tensor, alpha: float) -> torch.Tensor:
    """`α·t / (1 + (α−1)·t)`: a monotone map of [0, 1] onto itself fixing 0 and 1.

    α = 1 is the identity; α < 1 bends the grid towards t = 0 (noise), so uniform steps in the input spend more
    steps near noise. Equivalent to the SD3 shift s = 1/α applied to the noise level 1 − t.
    """
    if alpha <= 0:
        raise ValueError(f"warp_time alpha must be positive, got alpha={alpha}")
    return alpha * t / (1 + (alpha - 1) * t)


def num_grid_steps(num_steps: int, t0: float = 0.0) -> int:
    """Velocity evaluations of a grid from t0: `int(num_steps·(1 − t0))` (the released edit mode's count)."""
    if not 0.0 <= t0 < 1.0:
        raise ValueError(f"time grid t0={t0} must lie in [0, 1)")
    n = num_steps if t0 == 0 else int(num_steps * (1 - t0))
    if n <= 0:
        raise ValueError(f"time grid num_steps={num_steps} from t0={t0} leaves int(num_steps·(1 − t0))={n} steps")
    return n


def time_grid(
    num_steps: int,
    alpha: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    grid: str = "native",
    t0: float = 0.0,
) -> torch.Tensor:
    """Increasing times warped by `warp_time(·, alpha)`, from `warp(t0)` (0 for t0 = 0) on.

    `native`: `n + 1` points ending exactly at 1. `official`: `n` points ending at 1, then 1 + 1/n (the released
    sampler's extra Euler step of 1/n at t = 1). n = `num_grid_steps(num_steps, t0)`.
    """
    if num_steps <= 0:
        raise ValueError(f"time_grid num_steps must be positive, got num_steps={num_steps}")
    if grid not in TIME_GRIDS:
        raise ValueError(f"time_grid grid must be one of {TIME_GRIDS}, got grid={grid!r}")
    n = num_grid_steps(num_steps, t0)
    if grid == "native":
        return warp_time(torch.linspace(t0, 1.0, n + 1, dtype=torch.float64), alpha).to(device=device, dtype=dtype)
    t = warp_time(torch.linspace(t0, 1.0, n, dtype=torch.float64), alpha)
    return torch.cat([t, t.new_full((1,), 1.0 + 1.0 / n)]).to(device=device, dtype=dtype)


def _t_batch(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return t.to(device=x.device, dtype=x.dtype).expand(x.shape[0])


def euler(fn: VelocityFn, x0: torch.Tensor, times: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """First-order integration of `dx/dt = fn(x, t)` over `times`; returns x at `times[-1]`."""
    x = x0
    for i in range(len(times) - 1):
        t_B = _t_batch(times[i], x)
        v = fn(x, t_B)
        if callback is not None:
            callback(i, t_B, x, v)
        x = x + (times[i + 1] - times[i]).to(x.dtype) * v
    return x


def heun(fn: VelocityFn, x0: torch.Tensor, times: torch.Tensor, callback: StepCallback | None = None) -> torch.Tensor:
    """Second-order Heun (explicit trapezoid) integration; two velocity evaluations per step.

    Exact for velocity fields that are affine in t and independent of x.
    """
    x = x0
    for i in range(len(times) - 1):
        t_B = _t_batch(times[i], x)
        dt = (times[i + 1] - times[i]).to(x.dtype)
        v = fn(x, t_B)
        if callback is not None:
            callback(i, t_B, x, v)
        v_next = fn(x + dt * v, _t_batch(times[i + 1], x))
        x = x + dt * 0.5 * (v + v_next)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": euler, "heun": heun}


def solve(
    fn: VelocityFn,
    x0: torch.Tensor,
    num_steps: int,
    alpha: float,
    sampler: str,
    callback: StepCallback | None = None,
    grid: str = "native",
    t0: float = 0.0,
) -> torch.Tensor:
    """Integrates from `x0` at t0 (noise at t0 = 0) to t = 1 with a sampler picked by name from `SAMPLERS` (R6) over
    the time grid picked by name from `TIME_GRIDS`."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got sampler={sampler!r}")
    times = time_grid(num_steps, alpha, device=x0.device, grid=grid, t0=t0)
    return SAMPLERS[sampler](fn, x0, times, callback=callback)


def guided_velocity(fn_batched: VelocityFn, guidance_scale: float) -> VelocityFn:
    """Classifier-free guidance in one batched call.

    `fn_batched` receives the doubled batch `[x; x]` with times `[t; t]`, where its first half is conditioned and
    its second half unconditioned, and the wrapper returns `v_u + s·(v_c − v_u)` for the original batch.
    """

    def fn(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        v_c, v_u = fn_batched(torch.cat([x, x]), torch.cat([t_B, t_B])).chunk(2)
        return v_u + guidance_scale * (v_c - v_u)

    return fn


def initial_noise(
    shape: tuple[int, ...] | torch.Size,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal x0 drawn in float32 on the generator's device, then moved to `device`/`dtype`.

    Drawing on the generator's device makes a seed give the same noise whatever device samples run on.
    """
    draw_device = generator.device if generator is not None else device
    x0 = torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=torch.float32)
    return x0.to(device=device if device is not None else x0.device, dtype=dtype)
