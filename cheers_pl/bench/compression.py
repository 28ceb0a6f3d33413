"""Benchmark 1, token compression: LLM forward + backward cost per image with f×f token unshuffle vs none.

Cheers compresses the semantic grid 2×2 before the LLM (4× fewer tokens, DESIGN.md §1.1 step 5). This measures
what that buys in the LLM itself: one sequence = a text prompt + one bidirectional image block of (g/f)² tokens,
for semantic grids g = 16 (256² at patch 16) and g = 32 (512²), with the same LLM widths. The loss is the mean
square of the final hidden states (no LM head: image positions are never text targets). The prompt is part of every
sequence, so the sequence shrinks by (P + g²)/(P + g²/f²) < f²: `seq_ratio` in the results is that bound for
linear-in-length costs.

Shape legend: B batch, L = prompt + N image tokens, D LLM width.
"""

import functools
from collections.abc import Callable

import torch

from cheers_pl.bench.measure import activation_memory, count_flops, module_tensors, ratio, timed_interleaved
from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.llm import LLM, LLMConfig


def _llm_step(llm: LLM, batch: int, prompt_len: int, num_image_tokens: int, device: str):
    """A closure computing the loss of one LLM forward over B×L random embeddings (prompt + one image block)."""
    L = prompt_len + num_image_tokens
    block_ids_BL = torch.zeros(batch, L, dtype=torch.long, device=device)
    block_ids_BL[:, prompt_len:] = 1
    pad_mask_BL = torch.ones(batch, L, dtype=torch.bool, device=device)
    mask = block_causal_mask(block_ids_BL, pad_mask_BL)
    positions = positions_from_padding(pad_mask_BL)
    embeds_BLD = torch.randn(batch, L, llm.hidden_dim, device=device, requires_grad=True)

    def loss() -> torch.Tensor:
        out = llm(embeds_BLD, mask, positions, compute_logits=False)
        return out.hidden_BLD.float().pow(2).mean()

    return loss


def bench_compression(
    llm_cfg: LLMConfig,
    grids: tuple[int, ...] = (16, 32),
    factors: tuple[int, ...] = (1, 2),
    prompt_len: int = 32,
    batch: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
) -> dict:
    """LLM forward + backward time, FLOPs and activation memory per image for each grid × compression factor.

    Args:
        llm_cfg: The LLM (same widths for every case).
        grids: Semantic grid sides g before compression (16 ↔ 256² and 32 ↔ 512² at patch 16).
        factors: Compression factors f (1 = none, 2 = the paper's 4× fewer tokens); the first is the baseline.
        prompt_len: Text tokens before the image block.
        batch: Images per timed call (results are per image).

    Returns:
        `{"cases": [...], "ratios": [...]}`; each ratio compares factor 1 (or the first factor) with every other
        factor at the same grid: time, FLOPs and memory baseline ÷ compressed.
    """
    for g in grids:
        for f in factors:
            if g % f:
                raise ValueError(f"grid {g} is not divisible by compression factor {f}")
    llm = LLM(llm_cfg).to(device).train()

    def fwd_bwd(step: Callable[[], torch.Tensor]) -> None:
        llm.zero_grad(set_to_none=True)
        step().backward()

    cases = []
    for g in grids:
        steps = {f: _llm_step(llm, batch, prompt_len, (g // f) ** 2, device) for f in factors}

        # factors of one grid run round-robin so that foreign load does not bias their ratio
        times = timed_interleaved(
            {str(f): functools.partial(fwd_bwd, steps[f]) for f in factors}, repeats, warmup, device
        )
        for f in factors:
            n = (g // f) ** 2
            flops = count_flops(functools.partial(fwd_bwd, steps[f]))
            mem = activation_memory(steps[f], device, exclude=module_tensors(llm))
            llm.zero_grad(set_to_none=True)
            t = times[str(f)]
            cases.append(
                {
                    "grid": g,
                    "factor": f,
                    "token_reduction": f * f,
                    "image_tokens": n,
                    "seq_len": prompt_len + n,
                    "time_per_image_s": t["median_s"] / batch,
                    "flops_per_image": flops / batch,
                    "memory_per_image_bytes": mem["bytes"] / batch,
                    "memory_method": mem["method"],
                    "timing": t,
                }
            )
    ratios = []
    for g in grids:
        base = next(c for c in cases if c["grid"] == g and c["factor"] == factors[0])
        for c in cases:
            if c["grid"] != g or c is base:
                continue
            ratios.append(
                {
                    "grid": g,
                    "baseline_factor": base["factor"],
                    "factor": c["factor"],
                    "token_ratio": base["image_tokens"] / c["image_tokens"],
                    "seq_ratio": base["seq_len"] / c["seq_len"],
                    "time_ratio": ratio(base["time_per_image_s"], c["time_per_image_s"]),
                    "flops_ratio": ratio(base["flops_per_image"], c["flops_per_image"]),
                    "memory_ratio": ratio(base["memory_per_image_bytes"], c["memory_per_image_bytes"]),
                }
            )
    return {
        "llm": {"dim": llm_cfg.dim, "num_layers": llm_cfg.num_layers},
        "prompt_len": prompt_len,
        "batch": batch,
        "cases": cases,
        "ratios": ratios,
        "aim": {"time_ratio": 3.5, "memory_ratio": 3.5},
    }
