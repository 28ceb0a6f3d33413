"""Skipping optimizer steps whose loss or gradients are not finite (NaN/Inf), and stopping after K in a row.

Lightning has no such switch (`detect_anomaly` only raises; a `training_step` that returns None skips the backward
but not the collectives, and under DDP/FSDP hangs), so `NonFiniteGuard` does it from the hooks around the step:

- `on_before_backward` records, per micro-batch, whether the loss is finite (a tensor flag, no device sync);
- `on_before_optimizer_step` (after the last micro-batch of an accumulated step, before clipping and the update)
  adds whether every local gradient is finite (max-abs per tensor: no overflow of a sum of squares), and the ranks
  decide together (one boolean all-reduce: one bad rank skips the step on all of them, so sharded or replicated
  weights never diverge). A skipped step sets every gradient to None: AdamW then leaves each parameter, its moments
  and its step count untouched, clipping sees no gradient, and `EMACallback` does not update.

The step still counts (`global_step`, the learning-rate schedule and the data position advance, as when AMP's
GradScaler skips a step). Skips are counted (`train/skipped_steps`, in the checkpoint) and logged with the step and
the sample keys; after `max_consecutive_skips` in a row, `NonFiniteError` stops the run with the step, the last step
that updated the weights and the last checkpoint written.
"""

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch

from cheers_pl.checkpoint import AtomicCheckpointIO

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Training stopped because too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class NonFiniteConfig:
    """The `nonfinite:` section of an experiment."""

    skip_steps: bool = True  # false: no check at all (a NaN then reaches the weights, as in plain Lightning)
    max_consecutive_skips: int = 10

    def __post_init__(self) -> None:
        if self.max_consecutive_skips < 1:
            raise ValueError(f"nonfinite.max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")


def _grads(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: every element of every tensor is finite (empty tensors and an empty list count as finite)."""
    maxima = [t.detach().abs().amax().float() for t in tensors if t.numel()]
    return torch.stack(maxima).isfinite().all() if maxima else torch.tensor(True)


class NonFiniteGuard(L.Callback):
    """Skips a step with a non-finite loss or gradient on any rank; stops after `max_consecutive_skips` in a row."""

    def __init__(self, cfg: NonFiniteConfig) -> None:
        self.cfg = cfg
        self.skipped_total = 0
        self.consecutive = 0
        self.last_good_step = 0  # global_step after the last update that changed the weights
        self.last_step_skipped = False
        self._loss_finite: torch.Tensor | None = None
        self._keys: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self._keys += list(getattr(batch, "keys", []))[:8]

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        self._loss_finite = finite if self._loss_finite is None else self._loss_finite & finite

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = _grads(optimizer)
        finite = all_finite(grads).to(grads[0].device if grads else pl_module.device)
        if self._loss_finite is not None:
            finite = finite & self._loss_finite.to(finite.device)
        keys, self._keys, self._loss_finite = self._keys, [], None
        bad = trainer.strategy.reduce_boolean_decision(not bool(finite), all=False)
        step = trainer.global_step  # the step being taken (0-based)
        if not bad:
            self.consecutive, self.last_step_skipped, self.last_good_step = 0, False, step + 1
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.skipped_total += 1
        self.consecutive += 1
        self.last_step_skipped = True
        log.warning(
            "step %d skipped: non-finite loss or gradient on some rank (%d in a row, %d in all); this rank's keys: %s",
            step, self.consecutive, self.skipped_total, keys[:8],
        )  # fmt: skip
        if self.consecutive >= self.cfg.max_consecutive_skips:
            raise NonFiniteError(self._stop_message(trainer, step))

    def _stop_message(self, trainer: L.Trainer, step: int) -> str:
        io = trainer.strategy.checkpoint_io
        written = io.last_written if isinstance(io, AtomicCheckpointIO) else None
        written = trainer.strategy.broadcast(written)  # rank 0 writes the files; every rank raises together
        where = f"{written[0]} (step {written[1]})" if written else "none written in this run"
        return (
            f"training stopped at step {step}: {self.consecutive} consecutive steps had a non-finite loss or "
            f"gradient (nonfinite.max_consecutive_skips={self.cfg.max_consecutive_skips}); skipped steps changed no "
            f"weight, optimizer state or EMA, so the weights are those of step {self.last_good_step}; last good "
            f"checkpoint: {where}"
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_total), on_step=True, on_epoch=False)

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total, "consecutive": self.consecutive, "last_good": self.last_good_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_total = int(state_dict["skipped_total"])
        self.consecutive = int(state_dict["consecutive"])
        self.last_good_step = int(state_dict["last_good"])


def step_was_skipped(trainer: L.Trainer) -> bool:
    """Whether the guard of `trainer` skipped the optimizer step just taken (False without a guard)."""
    guard = next((c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)), None)
    return bool(guard is not None and guard.last_step_skipped)
