"""The released config → the official preset (cheers_pl/official/config.py, conf/model/cheers_1p5b_official.yaml)."""

import dataclasses
import json

import pytest

from cheers_pl.config import compose
from cheers_pl.model.cheers import full_cheers_config
from cheers_pl.official.config import official_cheers_config
from cheers_pl.official.conversion import read_names
from tests._official import TINY_CONFIG, official_shapes
from tests.official.conftest import FIXTURES

RELEASE = FIXTURES / "checkpoint"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _release_config():
    names, _ = read_names(RELEASE)
    return official_cheers_config(json.loads((RELEASE / "config.json").read_text()), names)


def test_the_yaml_preset_is_the_release_config() -> None:
    """conf/model/cheers_1p5b_official.yaml == the config derived from the release's config.json and names."""
    yaml_cfg = _flat(dataclasses.asdict(compose("align_1p5b", ["model=cheers_1p5b_official"]).model))
    code_cfg = _flat(dataclasses.asdict(_release_config()))
    differ = {k for k in yaml_cfg.keys() | code_cfg.keys() if yaml_cfg.get(k) != code_cfg.get(k)}
    assert differ == {"llm.pretrained", "vision.encoder.pretrained", "vision.vae.pretrained"}  # set by align_1p5b


def test_official_differs_from_native_exactly_in_the_documented_values() -> None:
    """The released-vs-native model differences are these config values (README table), no shape changes."""
    native, official = _flat(dataclasses.asdict(full_cheers_config())), _flat(dataclasses.asdict(_release_config()))
    differ = {k: (native[k], official[k]) for k in native if native[k] != official[k]}
    assert differ == {
        "vision.vae.subfolder": ("vae", None),
        "vision.vae.pixel_range": ("signed", "unit"),
        "vision.compressor_norm_eps": (1e-6, 1e-5),
        "vision.decoder_statistics": ("shared", "own"),
        "flow_head.time_scale": (1000.0, 1.0),
        "flow_head.stage2_positions": ("raster", "half_twice"),
        "flow_head.qkv_bias": (True, False),
        "flow_head.norm_weights": (False, True),
        "flow_head.modulation_dtype": ("input", "float32"),
        "flow_head.hfi_norm_eps": (1e-6, 1e-5),
    }


def test_depths_are_counted_from_the_names() -> None:
    cfg = official_cheers_config(TINY_CONFIG, official_shapes())
    assert (cfg.flow_head.stage1_depth, cfg.flow_head.stage2_depth) == (2, 1)
    assert cfg.llm.num_layers == 2 and cfg.vision.encoder.num_layers == 2
    assert cfg.vision.vae.block_out_channels == [32, 64] and cfg.flow_head.latent_dim == 32
    release = official_cheers_config(json.loads((RELEASE / "config.json").read_text()))
    assert (release.flow_head.stage1_depth, release.flow_head.stage2_depth, release.llm.num_layers) == (7, 3, 28)


def test_unsupported_configs_name_the_key() -> None:
    bad = json.loads(json.dumps(TINY_CONFIG))
    bad["vision_representation_config"]["hidden_act"] = "relu"
    with pytest.raises(ValueError, match="hidden_act"):
        official_cheers_config(bad)
    bad = json.loads(json.dumps(TINY_CONFIG))
    bad["vae_decoder_config"]["ch"] = 64
    with pytest.raises(ValueError, match="vae_encoder_config.ch"):
        official_cheers_config(bad)
