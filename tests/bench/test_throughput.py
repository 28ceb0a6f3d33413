"""Training-throughput benchmark: samples/s, FLOP/s and MFU derived from the measured step."""

import pytest

from cheers_pl.bench.throughput import bench_throughput


def test_throughput_rows(shard_overrides) -> None:
    out = bench_throughput(
        ("tiny",),
        ("generation",),
        batch_size=2,
        repeats=1,
        warmup=0,
        peak_flop_per_s=1e12,
        overrides=tuple(shard_overrides),
    )
    (row,) = out["rows"]
    assert row["preset"] == "tiny" and row["stage"] == "generation" and row["batch_size"] == 2
    assert 0 < row["trainable_parameters"] <= row["parameters"]
    assert row["flops_per_step"] > 0
    assert row["samples_per_s"] == pytest.approx(2 / row["step_s"])
    assert row["achieved_flop_per_s"] == pytest.approx(row["flops_per_step"] / row["step_s"])
    assert row["mfu"] == pytest.approx(row["achieved_flop_per_s"] / 1e12)
