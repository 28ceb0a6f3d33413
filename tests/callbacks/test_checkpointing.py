"""When last.ckpt is written (cheers_pl/callbacks/checkpointing.py): intervals, step boundaries, SIGTERM (R11)."""

import os
import signal

import lightning as L
import pytest
import torch

from cheers_pl.callbacks.checkpointing import DEFAULT_MINUTES, CheckpointConfig
from tests.callbacks._tiny_run import StepRecorder, tiny_run


def test_one_interval_at_most_and_a_default_of_thirty_minutes() -> None:
    assert CheckpointConfig().minutes() == DEFAULT_MINUTES == 30.0
    assert CheckpointConfig(every_n_steps=500).minutes() is None
    assert CheckpointConfig(every_n_minutes=5).minutes() == 5
    with pytest.raises(ValueError, match=r"checkpoint.every_n_steps=2 and checkpoint.every_n_minutes=5.*one of"):
        CheckpointConfig(every_n_steps=2, every_n_minutes=5)
    with pytest.raises(ValueError, match="checkpoint.every_n_steps must be >= 0"):
        CheckpointConfig(every_n_steps=-1)
    with pytest.raises(ValueError, match="checkpoint.every_n_minutes must be > 0"):
        CheckpointConfig(every_n_minutes=0)


class SigtermAt(L.Callback):
    """Sends this process SIGTERM at the start of one micro-batch."""

    def __init__(self, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.batch_idx:
            os.kill(os.getpid(), signal.SIGTERM)


class SavedSteps(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.steps.append(checkpoint["global_step"])


@pytest.fixture
def sigterm_safe():
    """If SIGTERM handling were broken, Lightning's own handler runs instead of the default (which kills pytest)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.slow
def test_sigterm_mid_accumulation_stops_at_the_step_boundary_and_resumes_exactly(
    monkeypatch, shard_dir, tmp_path, sigterm_safe
) -> None:
    """SIGTERM during micro-batch 3 of step 1 (2 per step): step 1 completes, last.ckpt at step 2 resumes exactly."""
    args = ["trainer.max_steps=5", "trainer.accumulate_grad_batches=2", "checkpoint.every_n_steps=0"]
    full = StepRecorder()
    tiny_run(monkeypatch, shard_dir, tmp_path, "full", args, [full])
    first, saved = StepRecorder(), SavedSteps()
    stopped = tiny_run(monkeypatch, shard_dir, tmp_path, "cut", args, [SigtermAt(3), first, saved])
    assert stopped["stopped_by"] == "SIGTERM" and stopped["global_step"] == 2 and saved.steps == [2]
    assert first.loss == {s: full.loss[s] for s in range(2)}
    resumed = StepRecorder()
    last = stopped["checkpoint"]
    result = tiny_run(monkeypatch, shard_dir, tmp_path, "cut", [*args, f"resume_from={last}"], [resumed])
    assert result["global_step"] == 5 and "stopped_by" not in result
    assert resumed.keys == {s: full.keys[s] for s in range(2, 5)}
    assert resumed.loss == {s: full.loss[s] for s in range(2, 5)}
    assert len(set(full.loss.values())) == 5
    assert os.listdir(tmp_path / "cut" / "checkpoints") == ["last.ckpt"]


@pytest.mark.slow
def test_every_n_steps_overwrites_last_in_place_also_when_the_run_dir_is_reused(monkeypatch, shard_dir, tmp_path):
    saved = SavedSteps()
    tiny_run(monkeypatch, shard_dir, tmp_path, "run", ["trainer.max_steps=3", "checkpoint.every_n_steps=2"], [saved])
    assert saved.steps == [2, 3]  # periodic at 2, final at 3
    with pytest.warns(UserWarning, match="is from an earlier run and is overwritten"):
        tiny_run(monkeypatch, shard_dir, tmp_path, "run", ["trainer.max_steps=1"], [])
    ckpts = tmp_path / "run" / "checkpoints"
    assert os.listdir(ckpts) == ["last.ckpt"]  # no last-v1.ckpt beside a stale last.ckpt
    assert torch.load(ckpts / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 1


@pytest.mark.slow
def test_a_full_disk_loses_no_training_and_the_final_failure_is_an_error(monkeypatch, shard_dir, tmp_path) -> None:
    """Periodic writes that fail are logged and training goes on (no rank is left in the save barrier); the
    final write failing raises, naming the checkpoint."""
    import errno

    from cheers_pl import checkpoint

    def full_disk(ckpt, partial) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "write_partial", full_disk)
    recorder = StepRecorder()
    with pytest.raises(OSError, match=r"training finished at step 3 but the final checkpoint '.*last.ckpt' not wri"):
        tiny_run(monkeypatch, shard_dir, tmp_path, "full", ["trainer.max_steps=3", "checkpoint.every_n_steps=1"],
                 [recorder])  # fmt: skip
    assert sorted(recorder.loss) == [0, 1, 2]
    assert os.listdir(tmp_path / "full" / "checkpoints") == []  # no partial file left behind
