"""Sample-grid callback: PNG grid equals the generated images, TensorBoard tags, gate heat-map, fixed protocol."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cheers_pl.callbacks.image_samples import (
    DEFAULT_PROMPTS,
    ImageSamplesCallback,
    ImageSamplesConfig,
    figure_to_array,
    injection_ratio,
    render_gate_heatmap,
)
from cheers_pl.data.processing import to_unit
from cheers_pl.model.flow_head import HighFrequencyInjection, hfi_balance
from tests.callbacks._generation_fakes import FakeStage, make_data, make_trainer


def _stage(prompts: list[str]) -> FakeStage:
    gen = torch.Generator().manual_seed(3)
    return FakeStage({p: torch.rand(3, 8, 8, generator=gen) * 2 - 1 for p in prompts})


def _validate(tmp_path, callback: ImageSamplesCallback, stage: FakeStage, logger: object = False):
    loader, _ = make_data(num_batches=1, batch_size=2)
    trainer = make_trainer(tmp_path, [callback], logger=logger)
    trainer.validate(stage, dataloaders=loader, verbose=False)
    return trainer


def test_grid_png_tensorboard_and_gate_heatmap(tmp_path) -> None:
    cfg = ImageSamplesConfig(seed=5, num_steps=3, batch_size=5)
    stage = _stage(cfg.prompts)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    callback = ImageSamplesCallback(cfg)
    trainer = _validate(tmp_path, callback, stage, logger=logger)

    assert [c["seed"] for c in stage.calls] == [5, 6] and all(c["record_gates"] for c in stage.calls)
    assert [p for c in stage.calls for p in c["prompts"]] == DEFAULT_PROMPTS
    folder = tmp_path / "tb" / "version_0" / "samples"
    assert callback.last_paths == [folder / "step_0.png", folder / "gates_step_0.png"]

    png = np.asarray(Image.open(folder / "step_0.png").convert("RGB")).astype(np.float32) / 255
    assert png.shape == (2 * 10 + 2, 4 * 10 + 2, 3)  # 8 images of 8×8 in 4 columns, padding 2
    expected = to_unit(torch.stack([stage.lookup[p] for p in DEFAULT_PROMPTS]))
    assert np.abs(png[2:10, 2:10] - expected[0].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6
    assert np.abs(png[12:20, 32:40] - expected[7].permute(1, 2, 0).numpy()).max() <= 1 / 255 + 1e-6

    heat = np.asarray(Image.open(folder / "gates_step_0.png").convert("RGB"))
    assert heat.shape[0] > 50 and len(np.unique(heat.reshape(-1, 3), axis=0)) > 20  # a drawn figure, not blank
    assert (folder / "prompts.txt").read_text().splitlines()[1:] == DEFAULT_PROMPTS

    # fake gates are arange(S·B·M) per call: chunks of 5 and 3 prompts, 3 steps, 6 tokens, concatenated along B
    expected_mean = torch.cat([torch.arange(3 * b * 6.0) for b in (5, 3)]).mean().item()
    assert float(trainer.callback_metrics["val/gate_mean"]) == pytest.approx(expected_mean)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    assert {"val/samples", "val/gate_heatmap"} <= set(events.Tags()["images"])


def test_without_logger_writes_png_to_default_root_and_skips_gates_when_disabled(tmp_path) -> None:
    cfg = ImageSamplesConfig(prompts=["a red circle", "two blue squares"], gate_heatmap=False)
    stage = _stage(cfg.prompts)
    callback = ImageSamplesCallback(cfg)
    trainer = _validate(tmp_path, callback, stage)
    assert callback.last_paths == [tmp_path / "samples" / "step_0.png"]
    assert callback.last_paths[0].is_file() and not (tmp_path / "samples" / "gates_step_0.png").exists()
    assert stage.calls[0]["record_gates"] is False and "val/gate_mean" not in trainer.callback_metrics


def test_every_n_val_schedule_and_identical_samples_across_runs(tmp_path) -> None:
    cfg = ImageSamplesConfig(prompts=["a red circle", "a blue square"], every_n_val=2)
    stage = _stage(cfg.prompts)
    callback = ImageSamplesCallback(cfg)
    loader, _ = make_data(num_batches=1, batch_size=2)
    trainer = make_trainer(tmp_path, [callback])
    drawn = []
    for _ in range(3):
        before = len(stage.calls)
        trainer.validate(stage, dataloaders=loader, verbose=False)
        drawn.append(len(stage.calls) > before)
    assert drawn == [True, False, True]
    assert stage.calls[0] == stage.calls[1]  # same prompts, seed and sampling settings each time


def test_render_gate_heatmap_shapes_and_errors() -> None:
    gates = torch.zeros(5, 3, 16)  # a zero-initialised gate still renders
    image = figure_to_array(render_gate_heatmap(gates, (4, 4), ["a", "b", "c"]))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    with pytest.raises(ValueError, match="S×B×M"):
        render_gate_heatmap(torch.zeros(5, 16))
    with pytest.raises(ValueError, match="grid_hw"):
        render_gate_heatmap(gates, (3, 3))


@pytest.mark.parametrize(("field", "value"), [("prompts", []), ("prompts", [""]), ("every_n_val", 0)])
def test_config_validation_names_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"callbacks.image_samples.{field}"):
        ImageSamplesConfig(**{field: value})


def test_hfi_balance_measures_the_injected_share_and_removes_its_hook() -> None:
    gen = torch.Generator().manual_seed(0)
    z, detail = torch.randn(2, 5, 8, generator=gen), 3 * torch.randn(2, 5, 8, generator=gen)
    constant = HighFrequencyInjection(8, "constant", constant_gate=2.0)
    with hfi_balance(SimpleNamespace(hfi=constant)) as records:
        constant(z, detail)
        constant(z, detail)
    expected = 2 * detail.norm(dim=-1).mean() / z.norm(dim=-1).mean()
    assert len(records) == 2 and injection_ratio(records) == pytest.approx(float(expected), rel=1e-5)
    constant(z, detail)
    assert len(records) == 2  # the hook is gone after the block

    gated = HighFrequencyInjection(8, "gated")  # zero-initialised gate: nothing injected
    with hfi_balance(SimpleNamespace(hfi=gated)) as records:
        gated(z, detail)
    assert injection_ratio(records) == 0.0


def test_hfi_balance_without_a_flow_head_records_nothing() -> None:
    with hfi_balance(SimpleNamespace()) as records:
        pass
    assert records == [] and injection_ratio(records) is None
