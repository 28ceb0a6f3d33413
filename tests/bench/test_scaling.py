"""Scaling benchmark: token counts follow the resolution, FLOPs grow, ratios are relative to the first row."""

import pytest

from cheers_pl.bench.scaling import bench_scaling


def test_scaling_rows(tiny_cfg) -> None:
    out = bench_scaling(tiny_cfg, resolutions=(32, 64), prompt_lens=(8, 24), batch=1, repeats=1, warmup=0)
    res, seq = out["resolution"], out["sequence"]
    assert [r["image_tokens"] for r in res] == [4, 16]  # (side / patch 8 / compression 2)²
    assert [r["seq_len"] for r in seq] == [12, 28]
    for rows in (res, seq):
        assert rows[0]["time_vs_first"] == 1.0
        assert rows[1]["flops_vs_first"] == pytest.approx(rows[1]["flops"] / rows[0]["flops"])
        assert rows[1]["flops"] > rows[0]["flops"]
        assert rows[1]["activation_bytes"] > rows[0]["activation_bytes"]
