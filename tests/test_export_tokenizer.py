"""Tests for cheers_pl.export_tokenizer: a tokenizer checkpoint becomes a small directory stages start from."""

import json

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.config import compose, to_yaml
from cheers_pl.data.text_tokenizer import save_text_tokenizer, train_text_tokenizer
from cheers_pl.export_tokenizer import export_tokenizer, measure
from cheers_pl.stage import build_stage
from tests._models import FROM_TINY_TOKENIZER, TINY_TOKENIZER


@pytest.fixture(scope="module")
def exported(shard_dir, tmp_path_factory):
    cfg = compose("tiny_tokenizer", [f"data.shard_dir={shard_dir}", "data.num_workers=0"])
    stage = build_stage(cfg)
    with torch.no_grad():
        for p in stage.model.vision.encoder.parameters():
            p.add_(0.01)
    root = tmp_path_factory.mktemp("tok")
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg), "global_step": 5}, root / "last.ckpt")
    card = export_tokenizer(root / "last.ckpt", root / "out", num_scenes=32)
    return stage, card, root / "out"


def test_directory_holds_vision_and_towers_tokenizer_and_card(exported) -> None:
    stage, card, out = exported
    assert (out / "model.safetensors").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()
    assert json.loads((out / "card.json").read_text()) == card
    assert card["source"]["global_step"] == 5 and card["bytes"] < 10e6
    fig = card["figures"]
    assert {"psnr_vae", "psnr_decoder_t1", "parser_recovery", "retrieval"} <= set(fig)
    assert fig["retrieval"]["num_groups"] == 1 and set(fig["parser_recovery"]) == {"vae", "decoder_t1"}


def test_a_stage_starts_from_it_and_a_foreign_text_tokenizer_is_refused(exported, shard_dir, tmp_path) -> None:
    stage, _, out = exported
    align = build_stage(compose("tiny_align", [f"data.shard_dir={shard_dir}", f"stage.init_from={out}"]))
    for name, want in stage.model.vision.encoder.state_dict().items():
        torch.testing.assert_close(align.model.vision.encoder.state_dict()[name], want, rtol=0, atol=0)
    other = tmp_path / "other"
    save_text_tokenizer(train_text_tokenizer(["entirely different words here"] * 20, vocab_size=300), other)
    with pytest.raises(ValueError, match="maps text to other ids"):
        build_stage(compose("tiny_align", [f"data.shard_dir={shard_dir}", f"stage.init_from={out}",
                                           f"data.text_tokenizer={other}"]))  # fmt: skip


@pytest.mark.slow
def test_the_committed_tiny_tokenizer_has_the_figures_of_its_card(shard_dir) -> None:
    """`checkpoints/tiny_tokenizer` (what `make demo` starts from) loads as `init_from` and, re-measured on its card's
    first 64 test scenes, keeps issue 12's tokenizer aims: PSNR ≥ 26 dB, the parser recovers shape and colour of
    ≥ 95 % of objects from D(x1), image→caption retrieval top-1 among 32 ≥ 0.8."""
    card = json.loads((TINY_TOKENIZER / "card.json").read_text())
    assert (TINY_TOKENIZER / "model.safetensors").stat().st_size == card["bytes"] <= 10e6
    cfg = compose("tiny_tokenizer", [f"data.shard_dir={shard_dir}", "data.num_workers=0", *FROM_TINY_TOKENIZER])
    figures = measure(build_stage(cfg), num_scenes=64)
    stated = card["figures"]
    assert abs(figures["psnr_decoder_t1"] - stated["psnr_decoder_t1"]) < 1.5 and figures["psnr_decoder_t1"] >= 26
    recovery = figures["parser_recovery"]["decoder_t1"]
    assert recovery["shape"] >= 0.95 and recovery["color"] >= 0.95, recovery
    assert figures["retrieval"]["top1"] >= 0.8, figures["retrieval"]
