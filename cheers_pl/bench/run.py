"""The benchmark suite's entry point: `run(BenchArgs) -> dict` runs the chosen sections and writes the report (R12).

`python -m cheers_pl bench [out_dir=runs/bench] [repeats=5] [warmup=1] [sections=[compression,data]] [quick=true]`.
The default run targets < 10 minutes on 2 CPU cores (small preset for sections 1, 2, 4); `quick=true` (< 1 minute)
uses the tiny preset and fewer cases everywhere.
"""

import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict

import torch

from cheers_pl.bench.args import BenchArgs
from cheers_pl.bench.build import build_pipeline, experiment_config
from cheers_pl.bench.compression import bench_compression
from cheers_pl.bench.data import bench_data
from cheers_pl.bench.machine import machine_section
from cheers_pl.bench.report import write_report
from cheers_pl.bench.sampling import bench_sampling
from cheers_pl.bench.scaling import bench_scaling
from cheers_pl.bench.throughput import bench_stage, bench_throughput
from cheers_pl.config import compose


def _plan(args: BenchArgs) -> dict:
    """Sizes of every section for a quick or a full run."""
    if args.quick:
        return {
            "preset": "tiny",
            "grids": (8, 16),
            "steps": (2, 4),
            "words": (8, 32),
            "sample_batch": 1,
            "data_batches": 2,
            "data_batch": 8,
            "presets": ("tiny",),
            "stages": ("generation",),
            "thr_batch": 4,
            "resolutions": (64, 128),
            "prompt_lens": (16, 64),
            "scaling_batch": 1,
            "peak_size": 512,
        }
    return {
        "preset": args.preset,
        "grids": (16, 32),
        "steps": (2, 4, 8),
        "words": (8, 32, 128),
        "sample_batch": 1,
        "data_batches": 8,
        "data_batch": None,
        "presets": ("tiny", args.preset),
        "stages": ("tokenizer", "align", "generation"),
        "thr_batch": 8,
        "resolutions": (64, 128, 256),
        "prompt_lens": (16, 64, 256),
        "scaling_batch": 2,
        "peak_size": 1024,
    }


def run(args: BenchArgs) -> dict:
    """Runs the chosen sections, writes `bench.json` and `bench.md` to `args.out_dir`, returns the results."""
    torch.manual_seed(0)
    default_threads = torch.get_num_threads()
    threads = args.threads or (1 if os.getloadavg()[0] >= 1 else default_threads)
    torch.set_num_threads(threads)
    try:
        return _run(args, threads)
    finally:
        torch.set_num_threads(default_threads)


def _run(args: BenchArgs, threads: int) -> dict:
    """`run` with the thread count already set."""
    start = time.perf_counter()
    plan = _plan(args)
    rep, warm, dev = args.repeats, args.warmup, args.device
    results: dict = {
        "command": "python -m cheers_pl bench "
        + " ".join(f"{k}={v}" for k, v in asdict(args).items() if v != getattr(BenchArgs(), k)),
        "args": asdict(args),
    }
    results["machine"] = machine_section(dev, plan["peak_size"], rep, warm)
    results["machine"]["torch_threads"] = threads
    machine = results["machine"]
    peak_fp32 = max(machine["matmul_peak"]["fp32"]["flop_per_s"], machine["conv_peak_fp32"]["flop_per_s"])
    cfg = experiment_config(plan["preset"], "generation")
    notes = [f"torch intra-op threads: {threads} (threads={args.threads}; 0 = auto)."]
    wall: dict[str, float] = {}

    def section(name: str, fn: Callable[[], dict]) -> None:
        if name in args.sections:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results[name] = fn()
            wall[name] = time.perf_counter() - t0

    section(
        "compression",
        lambda: bench_compression(cfg.model.llm, plan["grids"], (1, 2), repeats=rep, warmup=warm, device=dev),
    )

    def sampling() -> dict:
        out = bench_sampling(
            build_pipeline(cfg, device=dev),
            plan["steps"],
            plan["words"],
            plan["sample_batch"],
            repeats=rep,
            warmup=warm,
        )
        return {"preset": plan["preset"], **out}

    section("sampling", sampling)
    section(
        "throughput",
        lambda: bench_throughput(plan["presets"], plan["stages"], plan["thr_batch"], rep, warm, peak_fp32, dev),
    )
    data_overrides = ["stage.init_from=null"] + (
        [f"data.batch_size={plan['data_batch']}"] if plan["data_batch"] else []
    )
    data_cfg = compose("tiny_generation", data_overrides).data

    def data() -> dict:
        consume = bench_stage("tiny", "generation", data_cfg.batch_size, rep, warm, None, dev)["samples_per_s"]
        return bench_data(data_cfg, consume, plan["data_batches"], rep, warmup=2)

    section("data", data)
    if "data" in args.sections:
        notes.append(
            "Data headroom: DataModule samples/s over the tiny generation stage's training-step samples/s "
            f"at the same batch size {data_cfg.batch_size} and {data_cfg.num_workers} loader workers."
        )
    tiny_cfg = experiment_config("tiny", "generation")
    section(
        "scaling",
        lambda: {
            "preset": "tiny",
            **bench_scaling(tiny_cfg, plan["resolutions"], plan["prompt_lens"], plan["scaling_batch"], rep, warm, dev),
        },
    )
    results["section_wall_s"] = wall
    results["notes"] = notes
    results["wall_s"] = time.perf_counter() - start
    paths = write_report(results, args.out_dir)
    return {"bench_json": str(paths["json"]), "bench_md": str(paths["md"]), "wall_s": results["wall_s"]}
