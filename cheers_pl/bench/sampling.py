"""Benchmark 2, sampling: prompt-KV reuse + batched guidance vs a naive loop that re-runs everything twice a step.

Per-image time of `num_steps` Euler steps with classifier-free guidance (no final VAE decode) for three velocity
functions of the same model:
- `cached_batched`: `CheersPipeline.velocity_fn(use_cache=True)`, the production path: the prompt and its
  `<no_mean>` twin run once into a KV cache (included in the time), each step runs only the N image tokens, cond and
  uncond in one batch;
- `uncached_batched`: `velocity_fn(use_cache=False)`: whole sequence each step, cond and uncond batched;
- `naive`: two separate un-cached passes per step (conditional, then the `<no_mean>` prompt), mixed here.
The ideal speed-up of KV reuse when the LLM dominates is (P + N)/N for P prompt and N image tokens.
"""

import functools
from collections.abc import Callable

import torch

from cheers_pl.bench.measure import ratio, timed_interleaved
from cheers_pl.model.generation import PromptVelocity
from cheers_pl.objective.sampling import initial_noise, solve
from cheers_pl.pipeline import CheersPipeline

METHODS = ("cached_batched", "uncached_batched", "naive")
_WORDS = "a small red circle left of a large blue square with stripes and two green triangles".split()


def make_prompt(num_words: int) -> str:
    """A synthetic-world-like prompt of `num_words` words (the word list repeated)."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(num_words))


def naive_velocity(pipe: CheersPipeline, prompts: list[str], guidance_scale: float) -> Callable:
    """Guided velocity from two separate un-cached passes per call: conditional prompt, then its `<no_mean>` twin."""
    both = pipe.prompt_batch(prompts, guided=True)
    B = len(prompts)
    cond = PromptVelocity(pipe.model, both.input_ids[:B], both.pad_mask[:B], 1.0, use_cache=False)
    uncond = PromptVelocity(pipe.model, both.input_ids[B:], both.pad_mask[B:], 1.0, use_cache=False)

    def fn(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v_c, v_u = cond(z_t, t), uncond(z_t, t)
        return v_u + guidance_scale * (v_c - v_u)

    return fn


def _sample(pipe: CheersPipeline, method: str, prompts: list[str], steps: int, guidance_scale: float) -> torch.Tensor:
    if method == "naive":
        fn = naive_velocity(pipe, prompts, guidance_scale)
    else:
        fn = pipe.velocity_fn(prompts, guidance_scale, use_cache=method == "cached_batched")
    vision, device = pipe.model.vision, pipe.device
    h, w = vision.semantic_grid_hw
    generator = torch.Generator(device=device).manual_seed(0)
    x0 = initial_noise((len(prompts), vision.latent_dim, h, w), generator, device=device)
    with torch.no_grad():
        return solve(fn, x0, steps, alpha=pipe.sampling.alpha, sampler=pipe.sampling.sampler)


def bench_sampling(
    pipe: CheersPipeline,
    steps_list: tuple[int, ...] = (4, 8, 16),
    prompt_words: tuple[int, ...] = (8, 32, 128),
    batch: int = 2,
    guidance_scale: float = 3.0,
    repeats: int = 5,
    warmup: int = 1,
) -> dict:
    """Per-image sampling time of each method vs steps (shortest prompt) and vs prompt length (middle step count).

    Returns:
        `{"cases": [...], "scaling_steps": [...], "scaling_prompt": [...]}`; every case has P, N, the time per image
        of each method, `speedup` = naive ÷ cached_batched, the ideal (P+N)/N, the aim 0.8·(P+N)/N, and the largest
        latent difference between the cached and the naive sample (they must agree).
    """
    pipe.model.eval()
    device = str(pipe.device)
    n = pipe.model.num_image_tokens
    mid_steps = steps_list[len(steps_list) // 2]
    grid = [(s, prompt_words[0]) for s in steps_list] + [(mid_steps, w) for w in prompt_words[1:]]
    cases = []
    for steps, words in grid:
        prompts = [make_prompt(words)] * batch
        p = pipe.velocity_fn(prompts, guidance_scale).prompt_len
        case = {"steps": steps, "prompt_words": words, "prompt_tokens": p, "image_tokens": n, "batch": batch}
        calls = {m: functools.partial(_sample, pipe, m, prompts, steps, guidance_scale) for m in METHODS}
        for method, t in timed_interleaved(calls, repeats, warmup, device).items():
            case[f"{method}_per_image_s"] = t["median_s"] / batch
        diff = _sample(pipe, "cached_batched", prompts, steps, guidance_scale) - _sample(
            pipe, "naive", prompts, steps, guidance_scale
        )
        case["max_abs_diff_cached_vs_naive"] = float(diff.abs().max())
        case["speedup"] = ratio(case["naive_per_image_s"], case["cached_batched_per_image_s"])
        case["speedup_kv_only"] = ratio(case["uncached_batched_per_image_s"], case["cached_batched_per_image_s"])
        case["ideal_speedup"] = (p + n) / n
        case["aim_speedup"] = 0.8 * (p + n) / n
        case["aim_met"] = case["speedup"] is not None and case["speedup"] >= case["aim_speedup"]
        cases.append(case)
    return {
        "guidance_scale": guidance_scale,
        "cases": cases,
        "scaling_steps": [c for c in cases if c["prompt_words"] == prompt_words[0]],
        "scaling_prompt": [c for c in cases if c["steps"] == mid_steps],
    }
