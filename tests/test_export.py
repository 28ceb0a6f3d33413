"""Tests for cheers_pl.export: a stage checkpoint becomes a directory that `CheersPipeline.from_pretrained` reloads."""

import pytest
import torch

from cheers_pl.config import compose, to_yaml
from cheers_pl.export import export_checkpoint
from cheers_pl.pipeline import CheersPipeline
from cheers_pl.stage import build_stage


def test_stage_checkpoint_exports_and_reloads_equal(shard_dir, tmp_path) -> None:
    cfg = compose("tiny_generation", [f"data.shard_dir={shard_dir}", "stage.init_from=null"])
    stage = build_stage(cfg)
    with torch.no_grad():
        for p in stage.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save({"state_dict": stage.state_dict(), "cheers_config": to_yaml(cfg)}, tmp_path / "last.ckpt")

    out = export_checkpoint(tmp_path / "last.ckpt", tmp_path / "export")
    pipe = CheersPipeline.from_pretrained(out)
    model = pipe.model
    want = stage.model.state_dict()
    got = model.state_dict()
    assert got.keys() == want.keys()
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    assert len(pipe.text_tokenizer) == len(stage.text_tokenizer)


def test_checkpoint_without_config_is_an_error(tmp_path) -> None:
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    with pytest.raises(ValueError, match="no saved config"):
        export_checkpoint(tmp_path / "bare.ckpt", tmp_path / "out")
