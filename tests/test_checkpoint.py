"""Tests for cheers_pl.checkpoint: reading a checkpoint file, the saved config, keys renamed since earlier releases."""

import pytest
import torch

from cheers_pl.checkpoint import (
    CONFIG_KEY,
    read_checkpoint,
    saved_config,
    upgrade_config,
    upgrade_state_dict,
)


def test_read_checkpoint_names_the_file_and_the_key(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"stage.init_from='.*nope.ckpt': no such file"):
        read_checkpoint(tmp_path / "nope.ckpt", "stage.init_from")
    (tmp_path / "text.ckpt").write_text("garbage\n")
    with pytest.raises(ValueError, match=r"ckpt='.*text.ckpt': cannot read checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no saved config .* not a cheers_pl checkpoint"):
        saved_config(read_checkpoint(tmp_path / "bare.ckpt"), tmp_path / "bare.ckpt")


def test_renamed_parameter_names_and_config_keys() -> None:
    state = {"model.tokenizer.vae.x": 1, "model.llm.tokenizer.y": 2, "model.contrastive.z": 3, "other.tokenizer.w": 4}
    assert upgrade_state_dict(state) == {
        "model.vision.vae.x": 1, "model.llm.tokenizer.y": 2, "model.contrastive.z": 3, "other.tokenizer.w": 4,
    }  # fmt: skip
    old = {
        "model": {"tokenizer": {"compression": 2}, "llm": {"dim": 8}},
        "data": {"tokenizer_vocab_size": 512, "text_tokenizer": None},
        "stage": {"trainable": ["model.tokenizer.compressor.*", "model.llm.*"]},
    }
    assert upgrade_config(old) == {
        "model": {"vision": {"compression": 2}, "llm": {"dim": 8}},
        "data": {"text_tokenizer_vocab_size": 512, "text_tokenizer": None},
        "stage": {"trainable": ["model.vision.compressor.*", "model.llm.*"]},
    }
    assert saved_config({CONFIG_KEY: "model:\n  tokenizer: {compression: 1}\n"}) == {
        "model": {"vision": {"compression": 1}}
    }
