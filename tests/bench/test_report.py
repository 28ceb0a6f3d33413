"""Report: bench.json round-trips and bench.md shows the machine, the aims and whether each is met."""

import json

from cheers_pl.bench.report import render_markdown, write_report

MACHINE = {
    "cpu_model": "X",
    "logical_cores": 2,
    "torch_threads": 1,
    "torch_version": "2",
    "device": "cpu",
    "dtype": "float32",
    "load_avg_1_5_15": [3.0, 2.0, 1.0],
    "matmul_peak": {"fp32": {"size": 64, "flop_per_s": 2e9}, "bf16": {"size": 64, "flop_per_s": 1e9}},
}


def _results() -> dict:
    return {
        "args": {"repeats": 5, "warmup": 1},
        "machine": MACHINE,
        "data": {
            "batch_size": 8,
            "num_workers": 2,
            "datamodule_samples_per_s": 100.0,
            "plain_samples_per_s": 50.0,
            "train_step_samples_per_s": 10.0,
            "headroom": 10.0,
            "vs_plain": 2.0,
        },
        "throughput": {
            "peak_flop_per_s": 2e9,
            "rows": [
                {
                    "preset": "small",
                    "stage": "generation",
                    "parameters": 7e7,
                    "trainable_parameters": 6e7,
                    "batch_size": 8,
                    "step_s": 1.0,
                    "samples_per_s": 8.0,
                    "flops_per_step": 4e8,
                    "achieved_flop_per_s": 4e8,
                    "mfu": 0.2,
                }
            ],
        },
    }


def test_markdown_has_machine_aims_and_verdicts() -> None:
    md = render_markdown(_results())
    assert "| cpu_model | X |" in md and "matmul peak fp32" in md
    assert "numbers are noisy" in md  # load average 3.0 > 1
    assert "| data headroom (DataModule ÷ train step) | 10.00× | ≥ 5× | yes |" in md
    assert "| MFU small / generation (fp32) | 20.0% | ≥ 30% | **no** |" in md


def test_write_report_files(tmp_path) -> None:
    paths = write_report(_results(), tmp_path / "out")
    assert json.loads(paths["json"].read_text())["data"]["headroom"] == 10.0
    assert paths["md"].read_text().startswith("# cheers_pl benchmark")
