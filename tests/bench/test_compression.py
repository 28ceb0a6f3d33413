"""Token-compression benchmark: token counts per case and ratios computed from the measured numbers."""

import pytest

from cheers_pl.bench.compression import bench_compression
from cheers_pl.model.llm import LLMConfig

TINY_LLM = LLMConfig(vocab_size=64, dim=32, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=64)


def test_cases_and_ratios() -> None:
    out = bench_compression(TINY_LLM, grids=(4, 8), factors=(1, 2), prompt_len=4, repeats=1, warmup=0)
    cases = {(c["grid"], c["factor"]): c for c in out["cases"]}
    assert {k: c["image_tokens"] for k, c in cases.items()} == {(4, 1): 16, (4, 2): 4, (8, 1): 64, (8, 2): 16}
    assert cases[(8, 1)]["seq_len"] == 4 + 64
    assert len(out["ratios"]) == 2
    for r in out["ratios"]:
        base, comp = cases[(r["grid"], 1)], cases[(r["grid"], 2)]
        assert r["token_ratio"] == 4.0
        assert r["time_ratio"] == pytest.approx(base["time_per_image_s"] / comp["time_per_image_s"])
        assert r["memory_ratio"] == pytest.approx(base["memory_per_image_bytes"] / comp["memory_per_image_bytes"])
        assert r["flops_ratio"] > 1 and r["memory_ratio"] > 1  # fewer tokens: less work, fewer activations
    assert cases[(8, 1)]["memory_method"] == "autograd saved tensors"


def test_rejects_indivisible_grid() -> None:
    with pytest.raises(ValueError, match="grid 5"):
        bench_compression(TINY_LLM, grids=(5,), factors=(1, 2), repeats=1, warmup=0)
