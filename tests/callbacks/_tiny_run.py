"""In-process tiny training runs with extra callbacks, for the fault tests (not a test module)."""

import lightning as L
import pytest

from cheers_pl import train
from cheers_pl.config import compose

BUILD_TRAINER = train.build_trainer
# every row holds an image and runs the flow head (the rows-only path crashes on a micro-batch without an
# understanding row: a 0-row batch into the pixel decoder), 4 rows per micro-batch, no validation, a log line per step
TINY = [
    "callbacks=none", "stage.init_from=null", "data.batch_size=4", "data.num_workers=0", "data.shuffle_buffer=20",
    "data.task_weights.text=0", "stage.understanding_zero_target=true", "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "stage.optim.warmup_frac=0.2",
]  # fmt: skip


def tiny_run(
    monkeypatch: pytest.MonkeyPatch, shard_dir, out, name: str, overrides: list[str], callbacks: list[L.Callback]
) -> dict:
    """`train.run` of `tiny_generation` in `out/name` with `callbacks` added to the Trainer's."""
    cfg = compose("tiny_generation", [*TINY, f"name={name}", f"output_root={out}", f"data.shard_dir={shard_dir}",
                                      *overrides])  # fmt: skip
    monkeypatch.setattr(train, "build_trainer", lambda c: BUILD_TRAINER(c, callbacks))
    return train.run(cfg)


class StepRecorder(L.Callback):
    """Per optimizer step (0-based): the loss of its last micro-batch and the keys of all its micro-batches."""

    def __init__(self) -> None:
        self.loss: dict[int, float] = {}
        self.keys: dict[int, list[str]] = {}
        self._keys: list[str] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        self._keys += list(batch.keys)
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.loss[trainer.global_step - 1] = float(outputs["loss"])
            self.keys[trainer.global_step - 1], self._keys = self._keys, []


class StopAt(L.Callback):
    """Stops training after `step` optimizer steps (same schedule as the full run, unlike a smaller max_steps)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args, **kwargs) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True
