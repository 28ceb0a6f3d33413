"""`data-stats`: streams N training samples through the DataModule and reports task counts, skip/convert counts
per reason and throughput (what a run's data looks like before spending compute on it)."""

import time
from dataclasses import dataclass

from cheers_pl.callbacks.data_events import DataEventsCallback
from cheers_pl.config import ExperimentConfig
from cheers_pl.data.datamodule import CheersDataModule


@dataclass
class DataStatsArgs:
    """`python -m cheers_pl data-stats experiment=<name> num_samples=2000`."""

    num_samples: int = 2000
    split: str = "train"


def run(cfg: ExperimentConfig, args: DataStatsArgs) -> dict:
    """Loops over `num_samples` samples of a split; returns counts per task and event, and samples/s."""
    if args.split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {args.split!r}")
    datamodule = CheersDataModule(cfg.data)
    datamodule.setup()
    loader = getattr(datamodule, f"{args.split}_dataloader")()
    counter = DataEventsCallback()
    seen, first_batch_s, started = 0, None, time.perf_counter()
    for batch in loader:
        if first_batch_s is None:
            first_batch_s, timer = time.perf_counter() - started, time.perf_counter()
            timed_from = len(batch)
        counter.update(batch)
        seen += len(batch)
        if seen >= args.num_samples:
            break
    elapsed = time.perf_counter() - timer if first_batch_s is not None else 0.0
    return {
        "samples": seen,
        "counts": dict(sorted(counter.counts.items())),
        "samples_per_s_after_first_batch": round((seen - timed_from) / elapsed, 1) if elapsed > 0 else None,
        "first_batch_s": round(first_batch_s or 0.0, 2),
        "num_workers": cfg.data.num_workers,
        "batch_size": cfg.data.batch_size,
    }
