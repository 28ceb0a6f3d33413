"""Machine description and the matmul peak computed from its own timings."""

from cheers_pl.bench.machine import conv_peak, describe_machine, machine_section, matmul_peak


def test_describe_machine_fields() -> None:
    info = describe_machine()
    for key in ("cpu_model", "logical_cores", "torch_threads", "torch_version", "device", "dtype", "load_avg_1_5_15"):
        assert key in info
    assert len(info["load_avg_1_5_15"]) == 3


def test_matmul_peak_is_flops_over_fastest_repeat() -> None:
    p = matmul_peak(size=32, repeats=3, warmup=0)
    assert p["flop_per_s"] == 2 * 32**3 / p["best_s"]
    assert p["flop_per_s"] >= p["median_flop_per_s"] > 0


def test_machine_section_has_fp32_and_bf16_peaks() -> None:
    m = machine_section(size=32, repeats=1, warmup=0)
    assert set(m["matmul_peak"]) == {"fp32", "bf16"}
    assert m["matmul_peak"]["bf16"]["dtype"] == "bfloat16"


def test_conv_peak_counts_conv_flops() -> None:
    p = conv_peak(channels=8, side=8, repeats=2, warmup=0)
    assert p["flop_per_s"] == 2 * 2 * 8 * 8 * 8 * 8 * 9 / p["best_s"]
    assert "conv_peak_fp32" in machine_section(size=16, repeats=1, warmup=0)
