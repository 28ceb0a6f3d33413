"""Config composition and validation (cheers_pl/config.py)."""

from pathlib import Path

import pytest

from cheers_pl.config import CONF_DIR, ExperimentConfig, compose, load_config, save_config

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes(name: str) -> None:
    cfg = compose(name)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.name == name


def test_overrides_apply_with_types() -> None:
    cfg = compose("tiny_data", ["data.batch_size=7", "trainer.max_steps=3", "data.task_weights.text=0"])
    assert cfg.data.batch_size == 7 and cfg.trainer.max_steps == 3 and cfg.data.task_weights.text == 0.0


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match="data.batch_sizee"):
        compose("tiny_data", ["data.batch_sizee=3"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ValueError, match="data.batch_size"):
        compose("tiny_data", ["data.batch_size=many"])


def test_invalid_value_is_named() -> None:
    with pytest.raises(ValueError, match="data.batch_size must be positive"):
        compose("tiny_data", ["data.batch_size=0"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path: Path) -> None:
    for group in ("experiment", "data", "trainer"):
        (tmp_path / group).mkdir()
    (tmp_path / "data" / "d.yaml").write_text("image_size: 64\nimag_size: 32\n")
    (tmp_path / "trainer" / "t.yaml").write_text("max_steps: 1\n")
    (tmp_path / "experiment" / "e.yaml").write_text("defaults: {data: d, trainer: t}\n")
    with pytest.raises(ValueError, match=r"d\.yaml.*data\.imag_size"):
        compose("e", conf_dir=tmp_path)


def test_missing_required_value_is_named(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "e.yaml").write_text("data:\n  shard_dir: ???\n")
    with pytest.raises(ValueError, match="data.shard_dir"):
        compose("e", conf_dir=tmp_path)


def test_unknown_experiment_and_group_option() -> None:
    with pytest.raises(ValueError, match="options"):
        compose("no_such_experiment")
    with pytest.raises(ValueError, match="data='nope'"):
        compose("tiny_data", ["data=nope"])


def test_group_swap_from_command_line() -> None:
    cfg = compose("tiny_data", ["data=webdataset"])
    assert cfg.data.image_size == 512


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = compose("tiny_data", ["data.batch_size=5"])
    path = save_config(cfg, tmp_path)
    assert load_config(path) == cfg


def test_yaml_syntax_error_names_file(tmp_path: Path) -> None:
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "e.yaml").write_text("data: {shard_dir: ???}\n")
    with pytest.raises(ValueError, match=r"e\.yaml"):
        compose("e", conf_dir=tmp_path)


def test_experiment_base_inherits_and_cycles_are_errors(tmp_path: Path) -> None:
    for group in ("experiment", "data"):
        (tmp_path / group).mkdir()
    (tmp_path / "data" / "d.yaml").write_text("batch_size: 4\n")
    (tmp_path / "experiment" / "a.yaml").write_text("defaults: {data: d}\ndata: {image_size: 32}\n")
    (tmp_path / "experiment" / "b.yaml").write_text("base: a\ndata: {batch_size: 9}\n")
    cfg = compose("b", conf_dir=tmp_path)
    assert (cfg.name, cfg.data.image_size, cfg.data.batch_size) == ("b", 32, 9)
    (tmp_path / "experiment" / "a.yaml").write_text("base: b\n")
    with pytest.raises(ValueError, match="cycle"):
        compose("b", conf_dir=tmp_path)


def test_data_loss_weighting_and_the_zero_target_variant_are_exclusive() -> None:
    assert compose("tiny_generation", ["stage.flow.loss_weighting=data"]).stage.flow.loss_weighting == "data"
    with pytest.raises(ValueError, match="loss_weighting='data' weighs generation rows"):
        compose("tiny_generation", ["stage.understanding_zero_target=true", "stage.flow.loss_weighting=data"])
    with pytest.raises(ValueError, match="loss_weighting"):
        compose("tiny_generation", ["stage.flow.loss_weighting=snr"])
