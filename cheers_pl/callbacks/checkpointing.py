"""When a run writes `last.ckpt`: every N steps or minutes, at the end, and when the job receives SIGTERM.

`CheckpointConfig` is the `checkpoint:` section of an experiment. Both callbacks save only at an optimizer-step
boundary (never between the micro-batches of an accumulated step, whose partial gradients a checkpoint does not
hold), into one file, `<run>/checkpoints/last.ckpt`, overwritten in place (no `last-v1.ckpt` beside a stale
`last.ckpt` when a run directory is reused), atomically (`cheers_pl.checkpoint.AtomicCheckpointIO`).

SIGTERM (pre-emption, `scancel`, Kubernetes eviction): `SigtermCheckpoint` replaces Lightning's handler, which raises
`SIGTERMException` after the current micro-batch (mid-accumulation, so the checkpoint it could write would not resume
exactly) and broadcasts from inside the signal handler. Ours only sets a flag; at the next step boundary the ranks
agree (one boolean all-reduce: any rank that got the signal stops all), and training stops like `max_steps` would:
`train.run` then writes `last.ckpt` and returns with `stopped_by: SIGTERM`. The grace period between SIGTERM and
SIGKILL must cover one step plus one checkpoint write; if it does not, the last periodic checkpoint is intact.
"""

import logging
import signal
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)
DEFAULT_MINUTES = 30.0  # 1.5B recipes: ≈ 650 steps of ≈ 2.7 s; a 33 GB write every 30 min costs ≈ 1-2%


@dataclass
class CheckpointConfig:
    """How often `last.ckpt` is written during training: one of the two intervals; neither set means 30 minutes."""

    every_n_steps: int | None = None  # optimizer steps between saves; 0 = only at the end (and on SIGTERM)
    every_n_minutes: float | None = None  # wall-clock minutes between saves, at the next step boundary
    save_on_sigterm: bool = True

    def __post_init__(self) -> None:
        if self.every_n_steps is not None and self.every_n_minutes is not None:
            raise ValueError(
                f"checkpoint.every_n_steps={self.every_n_steps} and checkpoint.every_n_minutes={self.every_n_minutes}:"
                " set one of the two (the other to null)"
            )
        if self.every_n_steps is not None and self.every_n_steps < 0:
            raise ValueError(f"checkpoint.every_n_steps must be >= 0 or null, got {self.every_n_steps}")
        if self.every_n_minutes is not None and self.every_n_minutes <= 0:
            raise ValueError(f"checkpoint.every_n_minutes must be > 0 or null, got {self.every_n_minutes}")

    def minutes(self) -> float | None:
        """The time interval in effect (the default when no interval is set)."""
        if self.every_n_steps is None and self.every_n_minutes is None:
            return DEFAULT_MINUTES
        return self.every_n_minutes


def _stepped(trainer: L.Trainer, seen: list[int]) -> bool:
    """True once per optimizer step: in the `on_train_batch_end` of the micro-batch that completed it."""
    if trainer.global_step == seen[0]:
        return False
    seen[0] = trainer.global_step
    return True


class StepCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` writing `last.ckpt` only right after an optimizer step (time triggers included)."""

    def __init__(self, cfg: CheckpointConfig, dirpath: str | Path) -> None:
        minutes = cfg.minutes()
        super().__init__(
            dirpath=str(dirpath),
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.every_n_steps or 0,
            train_time_interval=timedelta(minutes=minutes) if minutes is not None else None,
            enable_version_counter=False,
        )
        self._seen = [-1]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._seen[0] = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if _stepped(trainer, self._seen):
            super().on_train_batch_end(trainer, pl_module, *args, **kwargs)


class SigtermCheckpoint(L.Callback):
    """Stops training at the first step boundary after SIGTERM on any rank (then `train.run` saves `last.ckpt`)."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._seen = [-1]
        self._previous: Any = None

    def _handler(self, trainer: L.Trainer) -> Any:
        def handle(signum: int, frame: Any) -> None:
            if not self.requested:
                log.warning("SIGTERM received: stopping at the next step boundary and writing last.ckpt")
                launcher = trainer.strategy.launcher
                if launcher is not None:  # ranks that Lightning started itself get the signal too
                    launcher.kill(signum)
            self.requested = True

        return handle

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own handler (just before the fit loop), so this one replaces it
        self._seen[0] = trainer.global_step
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler(trainer))
        except ValueError:  # not the main thread: signals cannot be handled here
            log.warning("SIGTERM handling is off: training does not run in the main thread")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        if not _stepped(trainer, self._seen):
            return
        if trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.requested = True
            self.stopped_at = trainer.global_step
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def checkpoint_callbacks(cfg: CheckpointConfig, dirpath: str | Path) -> list[L.Callback]:
    """The periodic `last.ckpt` writer and, when configured, the SIGTERM stop."""
    return [StepCheckpoint(cfg, dirpath), *([SigtermCheckpoint()] if cfg.save_on_sigterm else [])]
