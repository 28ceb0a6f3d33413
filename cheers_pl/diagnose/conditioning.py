"""Diagnosis 1e, does the prompt reach the flow head: prompt sensitivity and the balance of the HFI sum.

The flow head sees the prompt only through the LLM's hidden states at the image positions (stage 1), and the current
image through the detail residual S(D(z_t)) that gated HFI adds before stage 2. A head that learnt to denoise from S
alone draws images that ignore their prompts. Two numbers per flow time t, on test scenes with their canonical
captions (z_t = t·x1 + (1−t)·x0 from the scene's own latent x1, fresh noise x0):
- prompt sensitivity: rotate the prompts of the batch by one (every row gets another scene's caption, z_t unchanged)
  and measure the relative change ‖a − b‖ / ‖a‖ of the stage-1 output and of the head's output (its raw prediction,
  velocity or data, before the model turns it into a velocity); 0 means the prompt does not matter;
- HFI balance: the mean per-token norm of the stage-1 grid Z' and of the injected term g·S, and the mean gate g;
  after the LayerNorm of `Z' + g·S` only their ratio counts, so ‖g·S‖ ≫ ‖Z'‖ drowns what stage 1 carries.
Guidance is off (scale 1): these are properties of the conditional field itself.
A third measurement locates where sampling loses the scene: `recovery_by_noise_level` noises each test scene's latent
to t0 and integrates to t = 1 with the pipeline's sampler and guidance, conditioned on the scene's caption; the scene
parser then scores the decoded image against the scene. t0 = 0 is text-to-image; at t0 near 1 the head need only keep
what z_t already shows. A head that draws shapes from t0 = 0.7 but loses their colours there fails in the late,
detail-level steps, not in reading the prompt.
A fourth, `prompt_gain`, asks whether the prompt makes the prediction *better*, not only different: per t, the mean
squared error of the data estimate x̂1 = z_t + (1 − t)·v̂ against the scene's latent x1, once with the scene's own
caption and once with another scene's (z_t unchanged), and the gain 1 − own / other. A head that draws from its
prompt has a gain near 1 at t = 0 (the caption is all it knows there); a gain of 0 is an unconditional generator,
however much the prompt moves its output.

Shape legend: B scenes, P latent channels, h×w latent grid, M tokens of the full grid, C channels.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from cheers_pl.data.processing import to_uint8
from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.data.synthetic_text import captions
from cheers_pl.diagnose.probes import scenes
from cheers_pl.eval.reconstruction import parser_recovery
from cheers_pl.model.flow_head import hfi_balance
from cheers_pl.objective.sampling import solve


def _captioned_scenes(world: SyntheticConfig, num: int, seed: int) -> tuple[torch.Tensor, list, list[str]]:
    """The first `num` in-distribution test scenes: images, scenes and their canonical captions."""
    images, scene_list = scenes(world, "test", num, in_distribution=True)
    rng = np.random.default_rng(seed)
    return images, scene_list, [captions(s, rng, world)[0] for s in scene_list]


def _own_and_other_caption(
    pipeline: Any, world: SyntheticConfig, num_scenes: int, seed: int
) -> tuple[list[str], torch.Tensor, list[Any]]:
    """Canonical captions of `num_scenes` test scenes, their latents x1, and the unguided fields of the image block
    after each scene's own caption and after the next scene's (the prompts rotated by one)."""
    if num_scenes < 2:
        raise ValueError(f"num_scenes must be at least 2 (prompts are rotated among scenes), got {num_scenes}")
    model = pipeline.model
    images, _, prompts = _captioned_scenes(world, num_scenes, seed)
    x1 = model.vision.encode(images.to(next(model.parameters()).device))
    return prompts, x1, [pipeline.velocity_fn(p, 1.0) for p in (prompts, prompts[1:] + prompts[:1])]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float((a - b).norm() / a.norm().clamp_min(1e-12)), 4)


@torch.no_grad()
def run_conditioning(
    pipeline: Any,
    world: SyntheticConfig,
    num_scenes: int = 16,
    ts: Sequence[float] = (0.0, 0.3, 0.6, 0.9),
    seed: int = 0,
) -> dict[str, Any]:
    """Prompt sensitivity and HFI balance per t (module doc) of `pipeline`'s model on `num_scenes` test scenes."""
    head = pipeline.model.flow_head
    prompts, x1, fields = _own_and_other_caption(pipeline, world, num_scenes, seed)
    seen: dict[str, torch.Tensor] = {}

    def keep_stage1(_m: Any, _i: Any, out: torch.Tensor) -> None:
        seen["stage1"] = out

    def keep_head(_m: Any, _i: Any, out: Any) -> None:
        seen["head"] = out[0] if isinstance(out, tuple) else out

    hooks = [head.stage1.register_forward_hook(keep_stage1), head.register_forward_hook(keep_head)]
    generator = torch.Generator().manual_seed(seed)
    with hfi_balance(head) as balance:
        try:
            out: dict[str, Any] = {"num_scenes": num_scenes, "prompts": prompts[:4], "per_t": {}}
            for t in ts:
                x0 = torch.randn(x1.shape, generator=generator).to(x1)
                t_B = torch.full((num_scenes,), float(t), device=x1.device, dtype=x1.dtype)
                z_t = t * x1 + (1 - t) * x0
                runs = []
                for fn in fields:
                    fn(z_t, t_B)
                    runs.append({**seen, **balance[-1]})  # the HFI call of this evaluation
                a, b = runs
                out["per_t"][f"t={t}"] = {
                    "stage1_change": _relative(a["stage1"], b["stage1"]),
                    "head_change": _relative(a["head"], b["head"]),
                    "z_norm": round(float(a["z_norm"]), 3),
                    "gs_norm": round(float(a["gs_norm"]), 3),
                    "gate_mean": round(float(a["gate"]), 3),
                }
        finally:
            for hook in hooks:
                hook.remove()
    return out


@torch.no_grad()
def recovery_by_noise_level(
    pipeline: Any,
    world: SyntheticConfig,
    num_scenes: int = 32,
    t0s: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.9),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per t0: parser recovery (shape, colour, count, all) of test scenes sampled from z_t0 to 1 (module doc)."""
    model, sampling = pipeline.model, pipeline.sampling
    images, scene_list, prompts = _captioned_scenes(world, num_scenes, seed)
    fn = pipeline.velocity_fn(prompts, sampling.guidance_scale)
    x1 = model.vision.encode(images.to(next(model.parameters()).device))
    out = {}
    for t0 in t0s:
        x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(seed)).to(x1)
        z = t0 * x1 + (1 - t0) * x0
        latents = solve(fn, z, sampling.num_steps, sampling.alpha, sampling.sampler, grid=sampling.time_grid, t0=t0)
        decoded = to_uint8(model.vision.vae.decode(latents).clamp(-1.0, 1.0))
        found = parser_recovery(decoded, scene_list, world)
        out[f"t0={t0}"] = {k: round(float(found[k]), 3) for k in ("shape", "color", "count", "all")}
    return out


@torch.no_grad()
def prompt_gain(
    pipeline: Any,
    world: SyntheticConfig,
    num_scenes: int = 64,
    ts: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per t: the error of x̂1 with each scene's own caption and with the next scene's, and the gain (module doc).

    Guidance is off; the noise of each t is drawn once and shared by both prompts. Errors are per latent element,
    `x1_var` (the per-element variance of the scenes' latents) is the error of a constant guess at their mean.
    """
    _, x1, fields = _own_and_other_caption(pipeline, world, num_scenes, seed)
    x1_var = round(float(x1.var()), 4)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for t in ts:
        x0 = torch.randn(x1.shape, generator=generator).to(x1)
        z_t = t * x1 + (1 - t) * x0
        t_B = torch.full((num_scenes,), float(t), device=x1.device, dtype=x1.dtype)
        own, other = (float(((z_t + (1 - t) * fn(z_t, t_B) - x1) ** 2).mean()) for fn in fields)
        out[f"t={t}"] = {
            "x1_error_own": round(own, 4),
            "x1_error_other": round(other, 4),
            "gain": round(1.0 - own / other, 4) if other > 0 else 0.0,
            "x1_var": x1_var,
        }
    return out
