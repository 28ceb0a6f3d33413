"""Benchmark report: the results as `bench.json` and a Markdown `bench.md` with the machine and aims next to numbers."""

import json
from pathlib import Path


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _met(value: float | None, aim: float) -> str:
    return "n/a" if value is None else ("yes" if value >= aim else "**no**")


def _gflops(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.1f}"


def machine_lines(m: dict) -> list[str]:
    peak = m.get("matmul_peak", {})
    load = m.get("load_avg_1_5_15", [0.0])
    lines = ["## Machine", "", "| field | value |", "|---|---|"]
    for key in ("cpu_model", "gpu", "logical_cores", "torch_threads", "torch_version", "device", "dtype"):
        if key in m:
            lines.append(f"| {key} | {m[key]} |")
    lines.append(f"| load average (1/5/15 min) | {' / '.join(str(x) for x in load)} |")
    for name, p in peak.items():
        lines.append(f"| matmul peak {name} ({p['size']}²) | {_gflops(p['flop_per_s'])} GFLOP/s |")
    conv = m.get("conv_peak_fp32")
    if conv:
        lines.append(f"| 3×3 conv peak fp32 ({conv['size']}², 128 ch) | {_gflops(conv['flop_per_s'])} GFLOP/s |")
    if load and load[0] > 1:
        lines += ["", f"Load average {load[0]} > 1 at the start: other processes shared the CPU, numbers are noisy."]
    return lines


def summary_rows(r: dict) -> list[str]:
    """The aims table: one row per measured figure that has an aim."""
    rows = ["| figure | measured | aim | met |", "|---|---|---|---|"]
    comp = r.get("compression")
    if comp:
        for c in comp["ratios"]:
            label = (
                f"compression {c['token_ratio']:.0f}× image tokens, grid {c['grid']}² "
                f"(sequence {c.get('seq_ratio', c['token_ratio']):.2f}× shorter)"
            )
            rows.append(
                f"| {label}: LLM fwd+bwd time ratio | {_num(c['time_ratio'])}× | ≥ 3.5× | "
                f"{_met(c['time_ratio'], 3.5)} |"
            )
            rows.append(
                f"| {label}: activation memory ratio | {_num(c['memory_ratio'])}× | ≥ 3.5× | "
                f"{_met(c['memory_ratio'], 3.5)} |"
            )
    samp = r.get("sampling")
    if samp:
        for c in samp["cases"]:
            rows.append(
                f"| sampling speed-up, {c['steps']} steps, P={c['prompt_tokens']}, N={c['image_tokens']} | "
                f"{_num(c['speedup'])}× | ≥ {c['aim_speedup']:.2f}× | {_met(c['speedup'], c['aim_speedup'])} |"
            )
    data = r.get("data")
    if data:
        rows.append(
            f"| data headroom (DataModule ÷ train step) | {_num(data['headroom'])}× | ≥ 5× | "
            f"{_met(data['headroom'], 5.0)} |"
        )
    thr = r.get("throughput")
    if thr:
        for row in thr["rows"]:
            if row["preset"] == "small":
                rows.append(
                    f"| MFU small / {row['stage']} (fp32) | {_num(row['mfu'] and 100 * row['mfu'], '.1f')}% | "
                    f"≥ 30% | {_met(row['mfu'], 0.30)} |"
                )
    return rows


def detail_lines(r: dict) -> list[str]:
    out: list[str] = []
    comp = r.get("compression")
    if comp:
        out += [
            "",
            f"## 1. Token compression (LLM width {comp['llm']['dim']}, {comp['llm']['num_layers']} layers, "
            f"prompt {comp['prompt_len']} tokens)",
            "",
            "| grid | f | image tokens | time/image (ms) | GFLOP/image | activations/image (MiB) |",
            "|---|---|---|---|---|---|",
        ]
        for c in comp["cases"]:
            out.append(
                f"| {c['grid']}² | {c['factor']} | {c['image_tokens']} | {1e3 * c['time_per_image_s']:.1f} | "
                f"{c['flops_per_image'] / 1e9:.2f} | {c['memory_per_image_bytes'] / 2**20:.1f} |"
            )
        if comp["cases"]:
            out.append(f"\nMemory method: {comp['cases'][0]['memory_method']}.")
    samp = r.get("sampling")
    if samp:
        out += [
            "",
            f"## 2. Sampling (guidance {samp['guidance_scale']}, per image, no VAE decode)",
            "",
            "| steps | P | N | cached+batched (ms) | uncached batched (ms) | naive 2 passes (ms) | speed-up | "
            "KV-only speed-up | ideal (P+N)/N | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in samp["cases"]:
            out.append(
                f"| {c['steps']} | {c['prompt_tokens']} | {c['image_tokens']} | "
                f"{1e3 * c['cached_batched_per_image_s']:.1f} | {1e3 * c['uncached_batched_per_image_s']:.1f} | "
                f"{1e3 * c['naive_per_image_s']:.1f} | {_num(c['speedup'])} | {_num(c['speedup_kv_only'])} | "
                f"{c['ideal_speedup']:.2f} | {c['max_abs_diff_cached_vs_naive']:.1e} |"
            )
    data = r.get("data")
    if data:
        out += [
            "",
            f"## 3. Data pipeline (batch {data['batch_size']}, {data['num_workers']} workers)",
            "",
            "| DataModule (samples/s) | plain PIL folder (samples/s) | train step (samples/s) | headroom | "
            "DataModule ÷ plain |",
            "|---|---|---|---|---|",
            f"| {data['datamodule_samples_per_s']:.0f} | {data['plain_samples_per_s']:.0f} | "
            f"{_num(data['train_step_samples_per_s'], '.1f')} | {_num(data['headroom'])} | {_num(data['vs_plain'])} |",
        ]
    thr = r.get("throughput")
    if thr:
        out += [
            "",
            "## 4. Training throughput (fp32; MFU vs the fp32 peak = max(matmul, conv) "
            f"{_gflops(thr['peak_flop_per_s'])} GFLOP/s)",
            "",
            "| preset | stage | params (M) | trainable (M) | batch | step (s) | samples/s | "
            "GFLOP/step | GFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in thr["rows"]:
            out.append(
                f"| {row['preset']} | {row['stage']} | {row['parameters'] / 1e6:.1f} | "
                f"{row['trainable_parameters'] / 1e6:.1f} | {row['batch_size']} | {row['step_s']:.3f} | "
                f"{row['samples_per_s']:.1f} | {row['flops_per_step'] / 1e9:.2f} | "
                f"{_gflops(row['achieved_flop_per_s'])} | {_num(row['mfu'] and 100 * row['mfu'], '.1f')}% |"
            )
    sc = r.get("scaling")
    if sc:
        out += [
            "",
            f"## 5. Scaling (whole model fwd+bwd, batch {sc['batch']})",
            "",
            "| resolution | prompt | image tokens | L | step (ms) | × first | GFLOP | FLOP × first | "
            "activations (MiB) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sc["resolution"] + sc["sequence"]:
            res = row.get("resolution", sc["resolution"][0]["resolution"])
            prompt = row.get("prompt_len", row["seq_len"] - row["image_tokens"])
            out.append(
                f"| {res}² | {prompt} | {row['image_tokens']} | {row['seq_len']} | {1e3 * row['step_s']:.1f} | "
                f"{row['time_vs_first']:.2f} | {row['flops'] / 1e9:.2f} | {row['flops_vs_first']:.2f} | "
                f"{row['activation_bytes'] / 2**20:.1f} |"
            )
    return out


def render_markdown(results: dict) -> str:
    """The whole `bench.md`: header with protocol, machine, aims table, then one table per section."""
    args = results.get("args", {})
    lines = [
        "# cheers_pl benchmark",
        "",
        f"Command: `{results.get('command', 'python -m cheers_pl bench')}`. Medians of {args.get('repeats')} "
        f"timed repeats after {args.get('warmup')} warm-up call(s); wall time {results.get('wall_s', 0):.0f} s.",
        "",
    ]
    lines += machine_lines(results["machine"])
    lines += ["", "## Aims", ""] + summary_rows(results)
    lines += detail_lines(results)
    notes = results.get("notes")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str | Path) -> dict[str, Path]:
    """Writes `bench.json` and `bench.md` into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(results, indent=2, default=str))
    md_path.write_text(render_markdown(results))
    return {"json": json_path, "md": md_path}
