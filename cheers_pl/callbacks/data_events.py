"""Counts and reports what the data workers did: examples per task, skips per reason, mode conversions.

Workers cannot share counters with the main process, so the counts travel inside each `Batch.events`; this callback
sums them over the run and logs the running totals, named for what they are: `data/samples_seen/<task>`,
`data/skipped_total/<reason>` and `data/converted_total/<mode>` (cumulative counts since the start of the run, resumed
with it), and prints a summary when training ends.
"""

import logging
from collections import Counter

import lightning as L

from cheers_pl.data.batch import Batch
from cheers_pl.data.tasks import TASK_NAMES

log = logging.getLogger(__name__)
# internal counter prefix -> logged name (the totals are cumulative)
LOGGED_AS = {"task/": "samples_seen/", "skip/": "skipped_total/", "convert/": "converted_total/"}


def logged_name(key: str) -> str:
    """`task/generation` → `samples_seen/generation`, `skip/<reason>` → `skipped_total/<reason>`, ..."""
    for prefix, name in LOGGED_AS.items():
        if key.startswith(prefix):
            return name + key[len(prefix) :]
    return key


class DataEventsCallback(L.Callback):
    """Accumulates `Batch.events` and task counts over training."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def update(self, batch: Batch) -> None:
        self.counts.update(batch.events)
        for task, n in zip(*batch.task.unique(return_counts=True), strict=True):
            self.counts[f"task/{TASK_NAMES[int(task)]}"] += int(n)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if not isinstance(batch, Batch):
            return
        self.update(batch)
        if batch.events or trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            totals = {f"data/{logged_name(k)}": float(v) for k, v in self.counts.items()}
            pl_module.log_dict(totals, on_step=True, reduce_fx="sum")

    def summary(self) -> str:
        items = sorted((logged_name(k), v) for k, v in self.counts.items())
        return ", ".join(f"{k}={v}" for k, v in items) if items else "no batches"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log.warning("data summary (rank %d): %s", trainer.global_rank, self.summary())

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.counts = Counter(state_dict.get("counts", {}))
