"""Benchmark 4, training throughput per stage: samples/s, achieved FLOP/s and MFU for the tiny and small presets.

One training step = the stage's own `training_step` (its loss on a real batch of its experiment's data mixture),
backward, and an AdamW step over the declared trainable parameters. FLOPs of forward + backward are counted by
`FlopCounterMode` (optimizer FLOPs are not matmuls and are left out); MFU = achieved FLOP/s ÷ the fp32 peak measured
in the same run, the larger of the matmul and the 3×3 conv peak (training runs in fp32, as `conf/trainer/cpu.yaml`).
"""

import warnings

import torch

from cheers_pl.bench.build import experiment_config, first_batch, num_parameters
from cheers_pl.bench.measure import count_flops, ratio, timed
from cheers_pl.optim import build_optimizer
from cheers_pl.stage import build_stage


def bench_stage(
    preset: str,
    stage_name: str,
    batch_size: int,
    repeats: int,
    warmup: int,
    peak_flop_per_s: float | None,
    device: str = "cpu",
    overrides: tuple[str, ...] = (),
) -> dict:
    """Throughput of one stage at one preset (see the module docstring); `overrides` go to its experiment."""
    cfg = experiment_config(preset, stage_name, [*overrides, f"data.batch_size={batch_size}"])
    stage = build_stage(cfg).to(device).train()
    batch = first_batch(cfg, device)
    optimizer, _ = build_optimizer(stage.trainable_parameters(), cfg.stage.optim, total_steps=1000)

    def fwd_bwd() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = stage.training_step(batch, 0)
        loss.backward()

    def step() -> None:
        fwd_bwd()
        optimizer.step()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # `self.log` outside a Trainer
        t = timed(step, repeats, warmup, device)
        flops = count_flops(fwd_bwd)
    optimizer.zero_grad(set_to_none=True)
    achieved = flops / t["median_s"]
    return {
        "preset": preset,
        "stage": stage_name,
        "parameters": num_parameters(stage.model),
        "trainable_parameters": sum(p.numel() for _, p in stage.trainable_parameters()),
        "batch_size": len(batch),
        "step_s": t["median_s"],
        "samples_per_s": len(batch) / t["median_s"],
        "flops_per_step": flops,
        "achieved_flop_per_s": achieved,
        "mfu": ratio(achieved, peak_flop_per_s) if peak_flop_per_s else None,
        "timing": t,
    }


def bench_throughput(
    presets: tuple[str, ...] = ("tiny", "small"),
    stages: tuple[str, ...] = ("tokenizer", "align", "generation"),
    batch_size: int = 8,
    repeats: int = 5,
    warmup: int = 1,
    peak_flop_per_s: float | None = None,
    device: str = "cpu",
    overrides: tuple[str, ...] = (),
) -> dict:
    """`bench_stage` for every preset × stage; MFU against `peak_flop_per_s` (the fp32 peak)."""
    rows = []
    for preset in presets:
        for stage_name in stages:
            row = bench_stage(preset, stage_name, batch_size, repeats, warmup, peak_flop_per_s, device, overrides)
            rows.append(row)
            torch.manual_seed(0)
    return {"peak_flop_per_s": peak_flop_per_s, "rows": rows, "aim": {"mfu_small": 0.30}}
