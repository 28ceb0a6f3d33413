"""Exact resume: a tiny run stopped at step k and resumed from its checkpoint matches the uninterrupted run."""

import lightning as L
import pytest
import torch

from cheers_pl import train
from cheers_pl.config import compose

BUILD_TRAINER = train.build_trainer


class Recorder(L.Callback):
    """Per optimizer step: the training loss and the keys of the batch it was computed on."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.loss: dict[int, float] = {}
        self.keys: dict[int, list[str]] = {}
        self.stop_at = stop_at  # interrupt the run after this many steps (same schedule as the full run)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1  # already incremented by the optimizer step
        self.loss[step] = float(outputs["loss"])
        self.keys[step] = list(batch.keys)
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


def run(
    monkeypatch: pytest.MonkeyPatch,
    shard_dir,
    tmp_path,
    name: str,
    max_steps: int,
    resume: str | None = None,
    stop_at: int | None = None,
):
    cfg = compose("tiny_generation", [
        "callbacks=none", f"name={name}", f"output_root={tmp_path}", f"data.shard_dir={shard_dir}",
        "stage.init_from=null",
        "data.batch_size=4", "data.num_workers=1", "data.shuffle_buffer=20", f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=1000", "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "stage.optim.warmup_frac=0.2", f"resume_from={resume or 'null'}",
    ])  # fmt: skip
    recorder = Recorder(stop_at)
    monkeypatch.setattr(train, "build_trainer", lambda c: BUILD_TRAINER(c, [recorder]))
    result = train.run(cfg)
    return recorder, result


@pytest.mark.slow
def test_resume_at_step_k_continues_exactly(monkeypatch: pytest.MonkeyPatch, shard_dir, tmp_path) -> None:
    k, total = 1, 4
    full, _ = run(monkeypatch, shard_dir, tmp_path, "full", total)
    first, stopped = run(monkeypatch, shard_dir, tmp_path, "stopped", total, stop_at=k)
    assert stopped["global_step"] == k and first.loss == {s: full.loss[s] for s in range(k)}
    resumed, result = run(monkeypatch, shard_dir, tmp_path, "stopped", total, resume=stopped["checkpoint"])
    assert result["global_step"] == total and sorted(resumed.loss) == list(range(k, total))
    for step in range(k, total):
        assert resumed.keys[step] == full.keys[step], f"data position differs at step {step}"
        assert resumed.loss[step] == full.loss[step], f"loss differs at step {step}"
    # the steps differ from each other, so equality above is not a constant
    assert len({round(v, 6) for v in full.loss.values()}) == total
    assert torch.isfinite(torch.tensor(list(full.loss.values()))).all()
