"""FID callback: parity with torch-fidelity on the same features, sanity identities, schedule and config errors."""

import pytest
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from cheers_pl.callbacks.fid import FIDCallback, FIDConfig
from tests.callbacks._generation_fakes import FakeStage, make_data, make_trainer


def _run(tmp_path, shift: float, num_images: int = 24, **cfg) -> tuple[FakeStage, float, FIDCallback]:
    loader, lookup = make_data()
    stage = FakeStage(lookup, shift=shift)
    callback = FIDCallback(FIDConfig(num_images=num_images, batch_size=10, **cfg))
    trainer = make_trainer(tmp_path, [callback])
    trainer.validate(stage, dataloaders=loader, verbose=False)
    return stage, float(trainer.callback_metrics["val/fid_semantic"]), callback


def test_fid_matches_torch_fidelity_on_the_same_features(tmp_path) -> None:
    stage, fid, _ = _run(tmp_path, shift=0.3)
    prompts = [p for call in stage.calls for p in call["prompts"]]
    assert len(prompts) == 24 and len(set(prompts)) == 24  # exactly num_images generation-task captions
    real = torch.stack([stage.lookup[p] for p in prompts])
    with torch.no_grad():
        stats_real = fid_features_to_statistics(stage.semantic_features(real).double())
        stats_fake = fid_features_to_statistics(stage.semantic_features(real + 0.3).double())
    expected = fid_statistics_to_metric(stats_real, stats_fake, verbose=False)[KEY_METRIC_FID]
    assert expected > 0.1
    assert fid == pytest.approx(expected, abs=1e-3)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift(tmp_path) -> None:
    _, fid_same, _ = _run(tmp_path / "a", shift=0.0)
    _, fid_small, _ = _run(tmp_path / "b", shift=0.2)
    _, fid_large, _ = _run(tmp_path / "c", shift=0.6)
    assert abs(fid_same) < 1e-3
    assert 0 < fid_small < fid_large


def test_generation_uses_fixed_seed_and_sampling_settings_and_skips_understanding_rows(tmp_path) -> None:
    stage, _, callback = _run(tmp_path, shift=0.1, seed=7, num_steps=3, guidance_scale=2.5)
    assert [c["seed"] for c in stage.calls] == [7, 8, 9]  # chunks of 10, 10, 4 prompts
    assert all(c["num_steps"] == 3 and c["guidance_scale"] == 2.5 for c in stage.calls)
    assert all(p.startswith("prompt") for c in stage.calls for p in c["prompts"])
    # state is reset after the computation
    assert callback.metric is not None and int(callback.metric.real_features_num_samples) == 0


def test_every_n_val_schedule(tmp_path) -> None:
    loader, lookup = make_data(num_batches=2)
    stage = FakeStage(lookup, shift=0.2)
    callback = FIDCallback(FIDConfig(every_n_val=2, num_images=8))
    trainer = make_trainer(tmp_path, [callback])
    logged = []
    for _ in range(3):
        before = len(stage.calls)
        trainer.validate(stage, dataloaders=loader, verbose=False)
        logged.append(len(stage.calls) > before)
    assert logged == [True, False, True]
    assert callback.state_dict() == {"num_val_runs": 3}


def test_too_few_generation_examples_warns_instead_of_failing(tmp_path) -> None:
    loader, lookup = make_data(num_batches=1, batch_size=2)  # a single generation example
    stage = FakeStage(lookup)
    trainer = make_trainer(tmp_path, [FIDCallback(FIDConfig(num_images=8))])
    with pytest.warns(UserWarning, match="val/fid_semantic: skipped"):
        trainer.validate(stage, dataloaders=loader, verbose=False)
    assert "val/fid_semantic" not in trainer.callback_metrics and stage.calls == []


@pytest.mark.parametrize("path", [None, "/nonexistent/inception-weights.pth"])
def test_missing_inception_weights_error_names_path_and_key(path) -> None:
    with pytest.raises(ValueError, match="callbacks.fid.inception_weights") as err:
        FIDCallback(FIDConfig(feature="inception", inception_weights=path))
    assert repr(path) in str(err.value)


@pytest.mark.parametrize(
    ("field", "value"), [("feature", "clip"), ("num_images", 1), ("every_n_val", 0), ("batch_size", 0)]
)
def test_config_validation_names_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"callbacks.fid.{field}"):
        FIDConfig(**{field: value})


def test_inception_feature_loads_local_weights_file(tmp_path, monkeypatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    # A random-weights InceptionV3 saved to a local file, built without the download path.
    with monkeypatch.context() as patch:
        patch.setattr(tf_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(net.state_dict(), weights)

    callback = FIDCallback(FIDConfig(feature="inception", inception_weights=str(weights)))
    loaded = callback.metric.inception.state_dict()
    assert torch.equal(loaded["Mixed_7c.branch_pool.conv.weight"], net.state_dict()["Mixed_7c.branch_pool.conv.weight"])
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        callback.metric.update(callback._metric_input(images), real=True)
    assert int(callback.metric.real_features_num_samples) == 2
    assert torch.isfinite(callback.metric.real_features_sum).all() and callback.metric.real_features_sum.abs().sum() > 0


def test_floor_is_fid_between_two_real_samples_and_is_logged_beside(tmp_path) -> None:
    loader, lookup = make_data()
    stage = FakeStage(lookup, shift=0.6)
    callback = FIDCallback(FIDConfig(num_images=12, batch_size=12))
    trainer = make_trainer(tmp_path, [callback])
    trainer.validate(stage, dataloaders=loader, verbose=False)
    fid, floor = (float(trainer.callback_metrics[f"val/fid_semantic{s}"]) for s in ("", "_floor"))
    prompts = [p for call in stage.calls for p in call["prompts"]]
    others = [p for p in lookup if p not in prompts][:12]
    with torch.no_grad():
        a = fid_features_to_statistics(stage.semantic_features(torch.stack([lookup[p] for p in prompts])).double())
        b = fid_features_to_statistics(stage.semantic_features(torch.stack([lookup[p] for p in others])).double())
    assert floor == pytest.approx(fid_statistics_to_metric(a, b, verbose=False)[KEY_METRIC_FID], abs=1e-3)
    assert 0 < floor < fid
