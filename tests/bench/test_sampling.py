"""Sampling benchmark: the three velocity functions agree, and speed-ups/aims come from the measured times."""

import pytest

from cheers_pl.bench.build import build_pipeline
from cheers_pl.bench.sampling import METHODS, bench_sampling, make_prompt


def test_make_prompt_word_count() -> None:
    assert len(make_prompt(20).split()) == 20


def test_bench_sampling_report(tiny_cfg) -> None:
    pipe = build_pipeline(tiny_cfg)
    out = bench_sampling(pipe, steps_list=(1, 2), prompt_words=(4, 12), batch=1, repeats=1, warmup=0)
    assert [(c["steps"], c["prompt_words"]) for c in out["cases"]] == [(1, 4), (2, 4), (2, 12)]
    assert len(out["scaling_steps"]) == 2 and len(out["scaling_prompt"]) == 2
    short, long = out["cases"][1], out["cases"][2]
    assert long["prompt_tokens"] > short["prompt_tokens"]
    for c in out["cases"]:
        assert c["max_abs_diff_cached_vs_naive"] < 1e-4  # KV-cached batched guidance = two naive passes
        assert c["speedup"] == pytest.approx(c["naive_per_image_s"] / c["cached_batched_per_image_s"])
        n, p = c["image_tokens"], c["prompt_tokens"]
        assert n == pipe.model.num_image_tokens
        assert c["aim_speedup"] == pytest.approx(0.8 * (p + n) / n)
        assert c["aim_met"] == (c["speedup"] >= c["aim_speedup"])
        assert all(c[f"{m}_per_image_s"] > 0 for m in METHODS)
