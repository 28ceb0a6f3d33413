"""Measurement primitives: medians over the requested repeats, round-robin order, exact FLOPs, saved-tensor bytes."""

import pytest
import torch

from cheers_pl.bench.measure import (
    activation_memory,
    count_flops,
    module_tensors,
    ratio,
    saved_activation_bytes,
    timed,
    timed_interleaved,
)


def test_timed_runs_warmup_then_repeats_and_takes_the_median() -> None:
    calls = []
    t = timed(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7
    assert t["repeats"] == 5 and len(t["times_s"]) == 5
    assert t["median_s"] == sorted(t["times_s"])[2]
    assert t["min_s"] <= t["median_s"] <= t["max_s"]


def test_timed_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        timed(lambda: None, repeats=0, warmup=0)


def test_timed_interleaved_alternates_functions() -> None:
    order = []
    out = timed_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert set(out) == {"a", "b"} and out["a"]["repeats"] == 3


def test_count_flops_of_a_matmul_is_exact() -> None:
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    assert count_flops(lambda: a @ b) == 2 * 8 * 16 * 4


def test_saved_activation_bytes_counts_inputs_but_not_parameters() -> None:
    lin = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4, requires_grad=True)
    loss = lambda: lin(x).sum()  # noqa: E731
    only_acts = saved_activation_bytes(loss, exclude=module_tensors(lin))
    with_params = saved_activation_bytes(loss)
    assert only_acts == 5 * 4 * 4  # the fp32 input saved for the weight gradient
    assert with_params == only_acts + 3 * 4 * 4  # plus the weight saved for the input gradient
    mem = activation_memory(loss, "cpu", exclude=module_tensors(lin))
    assert mem == {"bytes": only_acts, "method": "autograd saved tensors"}


def test_ratio_handles_zero() -> None:
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(1.0, 0.0) is None
