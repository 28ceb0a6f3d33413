"""The `bench` command: argument validation, CLI registration, and a one-section quick run writing the report."""

import json

import pytest

from cheers_pl.bench.args import BenchArgs
from cheers_pl.bench.run import run
from cheers_pl.cli import COMMANDS, parse_args


def test_args_validation() -> None:
    with pytest.raises(ValueError, match="sections"):
        BenchArgs(sections=["nope"])
    with pytest.raises(ValueError, match="repeats"):
        BenchArgs(repeats=0)
    with pytest.raises(ValueError, match="device"):
        BenchArgs(device="tpu")


def test_cli_parses_bench_args() -> None:
    assert "bench" in COMMANDS
    args, rest = parse_args(COMMANDS["bench"].args_cls, ["quick=true", "repeats=7", "sections=[data,scaling]"])
    assert args.quick and args.repeats == 7 and args.sections == ["data", "scaling"] and rest == []


def test_quick_compression_run_writes_report(tmp_path) -> None:
    out = run(BenchArgs(out_dir=str(tmp_path), repeats=1, warmup=0, sections=["compression"], quick=True, threads=1))
    results = json.loads((tmp_path / "bench.json").read_text())
    assert set(results) >= {"machine", "compression", "args", "section_wall_s"}
    assert "sampling" not in results
    assert results["machine"]["torch_threads"] == 1
    md = (tmp_path / "bench.md").read_text()
    assert "## 1. Token compression" in md and "LLM fwd+bwd time ratio" in md
    assert out["bench_md"] == str(tmp_path / "bench.md")
