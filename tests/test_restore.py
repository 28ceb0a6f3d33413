"""Tests for cheers_pl.restore: a stage rebuilt from its checkpoint, also one written by an earlier release."""

import re

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.config import compose, to_yaml
from cheers_pl.restore import load_stage
from cheers_pl.stage import build_stage


def test_checkpoint_of_an_earlier_release_loads_with_renamed_keys(shard_dir, tmp_path) -> None:
    """Written when the vision tokenizer was `model.tokenizer` (weights, config, trainable globs) and the text
    tokenizer's vocabulary size was `data.tokenizer_vocab_size`."""
    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    stage = build_stage(cfg)
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    old_state = {re.sub(r"^model\.vision\.", "model.tokenizer.", k): v for k, v in stage.state_dict().items()}
    old_yaml = to_yaml(cfg).replace("  vision:\n", "  tokenizer:\n").replace("model.vision.", "model.tokenizer.")
    old_yaml = old_yaml.replace("text_tokenizer_vocab_size:", "tokenizer_vocab_size:")
    assert "model.tokenizer.compressor.*" in old_yaml and "vision" not in old_yaml
    torch.save({"state_dict": old_state, CONFIG_KEY: old_yaml}, tmp_path / "old.ckpt")

    restored = load_stage(tmp_path / "old.ckpt")
    assert restored.cfg.model == cfg.model and restored.cfg.stage.trainable == cfg.stage.trainable
    for (name, got), want in zip(restored.state_dict().items(), stage.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_weights_that_do_not_fit_name_the_file(shard_dir, tmp_path) -> None:
    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    state = {k: v for k, v in build_stage(cfg).state_dict().items() if "flow_head" not in k}
    torch.save({"state_dict": state, CONFIG_KEY: to_yaml(cfg)}, tmp_path / "cut.ckpt")
    with pytest.raises(ValueError, match=r"ckpt='.*cut.ckpt': weights do not fit its saved config"):
        load_stage(tmp_path / "cut.ckpt")


def test_load_pipeline_takes_a_stage_checkpoint_or_an_export(shard_dir, tmp_path) -> None:
    """The commands' `ckpt=`: a tiny-preset `last.ckpt` (its stage's pipeline) or an exported directory."""
    from cheers_pl.official_samples import GenEvalArgs, geneval_samples
    from cheers_pl.restore import load_pipeline

    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    stage = build_stage(cfg)
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg)}, tmp_path / "last.ckpt")
    pipe = load_pipeline(tmp_path / "last.ckpt", dtype="bfloat16")
    assert pipe.sampling == cfg.stage.sampling and next(pipe.model.parameters()).dtype == torch.bfloat16
    out = geneval_samples(GenEvalArgs(ckpt=str(tmp_path / "last.ckpt"), out_dir=str(tmp_path / "g"), limit=1,
                                      num_steps=2))  # fmt: skip
    assert out["written"] == 1 and len(list((tmp_path / "g" / "00000" / "samples").glob("*.png"))) == 4
    stage.pipeline.save_pretrained(tmp_path / "export")
    assert load_pipeline(tmp_path / "export").processing == cfg.data.processing
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_pipeline(tmp_path / "export", dtype="float8")
    with pytest.raises(ValueError, match="without cheers_config.json"):
        load_pipeline(tmp_path)
