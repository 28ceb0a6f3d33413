"""Measurement primitives of the benchmark suite: timed medians, FLOP counts and activation memory.

Times are medians of `repeats` timed calls after `warmup` untimed ones (`time.perf_counter`, the device synchronised
around each call). FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention).
Memory: on CUDA the peak of `torch.cuda.max_memory_allocated` above the memory held before the call; on CPU there is
no allocator peak to read for torch tensors (`tracemalloc` does not see them), so the activation memory is the size
of the tensors the autograd graph saves for backward (`torch.autograd.graph.saved_tensors_hooks`), each storage
counted once and parameters/buffers excluded.
"""

import statistics
import time
from collections.abc import Callable, Iterable

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device | str) -> None:
    """Waits for queued kernels on CUDA (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device | str = "cpu") -> dict:
    """Median wall time of `fn()` over `repeats` timed calls after `warmup` untimed calls.

    Returns:
        `{"median_s", "min_s", "max_s", "repeats", "times_s"}`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timed needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return _summary(times)


def timed_interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device | str = "cpu"
) -> dict[str, dict]:
    """`timed` for several functions whose times are compared, run round-robin (a, b, c, a, b, c, ...).

    On a shared machine a burst of foreign load then hits every function alike instead of one of them, so the
    ratios of the medians stay meaningful.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"timed needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: _summary(ts) for name, ts in times.items()}


def _summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
        "times_s": times,
    }


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of `fn` (forward and, when `fn` calls it, backward) by `FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def saved_activation_bytes(loss_fn: Callable[[], torch.Tensor], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while `loss_fn()` builds its graph.

    Parameters and buffers passed in `exclude` (and views of them) are not activations and are not counted. The
    graph is freed by a backward pass afterwards.
    """
    skip = {_storage_key(t) for t in exclude}
    seen: dict[tuple[str, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn()
    loss.backward()
    return sum(seen.values())


def activation_memory(
    loss_fn: Callable[[], torch.Tensor], device: torch.device | str, exclude: Iterable[torch.Tensor] = ()
) -> dict:
    """Activation memory of one forward + backward of `loss_fn` and how it was measured.

    Returns:
        `{"bytes", "method"}`: CUDA peak allocation above the baseline on CUDA, saved-tensor bytes on CPU (which
        also gets a `saved_tensor_bytes` field on CUDA for comparison).
    """
    exclude = list(exclude)
    if torch.device(device).type != "cuda":
        return {"bytes": saved_activation_bytes(loss_fn, exclude), "method": "autograd saved tensors"}
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    loss_fn().backward()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    saved = saved_activation_bytes(loss_fn, exclude)
    return {"bytes": int(peak), "method": "cuda.max_memory_allocated", "saved_tensor_bytes": saved}


def module_tensors(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """All parameters and buffers of the modules (what `saved_activation_bytes` must not count)."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def ratio(numerator: float, denominator: float) -> float | None:
    """`numerator / denominator`, None when the denominator is 0."""
    return numerator / denominator if denominator else None
