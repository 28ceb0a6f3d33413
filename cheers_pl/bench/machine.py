"""The machine a benchmark ran on: CPU/GPU, cores, load, torch version, and its measured matmul peak (fp32, bf16).

The peak is the best FLOP/s of a square matmul (2·n³ FLOPs) over the timed repeats in the same run (the fastest
repeat is the one least disturbed by other load), so utilisation (MFU) is relative to what this machine delivers,
not a datasheet number. The median is kept next to it.
"""

import os
import platform
import sys

import torch

from cheers_pl.bench.measure import timed


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else `platform.processor()`."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_machine(device: str = "cpu") -> dict:
    """Static description of the machine and the current load average (noisy numbers when > cores in use)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info = {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "dtype": "float32",
        "load_avg_1_5_15": [round(x, 2) for x in load],
    }
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def matmul_peak(
    device: str = "cpu", dtype: torch.dtype = torch.float32, size: int = 1024, repeats: int = 5, warmup: int = 1
) -> dict:
    """Peak (fastest repeat) and median matmul throughput of an n×n @ n×n product in `dtype` on `device`.

    Returns:
        `{"dtype", "size", "flop_per_s", "median_flop_per_s", "best_s", "median_s"}`.
    """
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    t = timed(lambda: torch.mm(a, b), repeats, warmup, device)
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "size": size,
        "flop_per_s": 2 * size**3 / t["min_s"],
        "median_flop_per_s": 2 * size**3 / t["median_s"],
        "best_s": t["min_s"],
        "median_s": t["median_s"],
    }


def conv_peak(device: str = "cpu", channels: int = 128, side: int = 64, repeats: int = 5, warmup: int = 1) -> dict:
    """Peak (fastest repeat) fp32 throughput of a 3×3 convolution, counted as 2·B·H·W·C_out·C_in·9 FLOPs.

    oneDNN convolutions can beat the matmul rate in counted FLOP/s (e.g. through Winograd-like transforms), so a
    conv-heavy step (VAE, pixel decoder) can exceed 100% of the matmul peak; MFU uses the larger of the two.
    """
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    x = torch.randn(2, channels, side, side, device=device)
    with torch.no_grad():
        t = timed(lambda: conv(x), repeats, warmup, device)
    flops = 2 * 2 * side * side * channels * channels * 9
    return {
        "dtype": "float32",
        "size": side,
        "flop_per_s": flops / t["min_s"],
        "median_flop_per_s": flops / t["median_s"],
        "best_s": t["min_s"],
        "median_s": t["median_s"],
    }


def machine_section(device: str = "cpu", size: int = 1024, repeats: int = 5, warmup: int = 1) -> dict:
    """Machine description plus fp32 and bf16 matmul peaks and the fp32 3×3 conv peak (at least 10 repeats each)."""
    out = describe_machine(device)
    out["matmul_peak"] = {
        name: matmul_peak(device, dtype, size, max(repeats, 10), warmup)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    out["conv_peak_fp32"] = conv_peak(device, repeats=max(repeats, 10), warmup=warmup)
    return out
