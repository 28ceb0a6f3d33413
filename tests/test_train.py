"""Tests for cheers_pl.train: what a run writes to TensorBoard (config as hyperparameters, named counters and
parameter groups, images and scalars of a validation at one step)."""

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cheers_pl import train
from cheers_pl.config import compose


@pytest.mark.slow
def test_tensorboard_has_hparams_named_series_and_aligned_steps(shard_dir, tmp_path) -> None:
    cfg = compose("tiny_generation", [
        f"data.shard_dir={shard_dir}", f"output_root={tmp_path}", "stage.init_from=null", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "callbacks=none",
        "callbacks.image_samples.num_steps=2", "callbacks.image_samples.gate_heatmap=false",
    ])  # fmt: skip
    train.run(cfg)
    events = EventAccumulator(str(tmp_path / "tiny_generation" / "tb"), size_guidance={"images": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "data/samples_seen/generation" in scalars and not any(t.startswith("data/task/") for t in scalars)
    assert {"lr-AdamW/weight_decay", "lr-AdamW/no_weight_decay"} <= set(scalars)
    seen = [e.value for e in events.Scalars("data/samples_seen/generation")]
    assert seen == sorted(seen) and seen[-1] > 0  # a cumulative count
    val_steps = {e.step for e in events.Scalars("val/loss")}
    image_steps = {e.step for e in events.Images("val/samples")}
    assert image_steps and image_steps == val_steps  # one validation, one step
    ratio = events.Scalars("val/hfi_injection_ratio")  # ‖g·S‖ / ‖Z'‖ of the real flow head while sampling
    assert {e.step for e in ratio} == val_steps and all(e.value >= 0 for e in ratio)
    width = events.Images("val/samples")[0].width
    assert width >= 4 * 2.5 * 64  # enlarged tiles (4 columns of 64-pixel samples)
    hparams = (tmp_path / "tiny_generation" / "tb" / "hparams.yaml").read_text()
    assert "max_steps: 3" in hparams and "stage1_depth" in hparams
