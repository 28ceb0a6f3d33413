"""The full-size align recipe (conf/experiment/align_1p5b.yaml) trains what the released align.yaml trains."""

import torch

from cheers_pl.config import compose
from cheers_pl.stage import build_stage
from cheers_pl.stage.base import match_trainable
from tests.stage.test_multimodal import _batch, _step

TINY = [
    "model=tiny", "data=synthetic", "trainer=cpu", "callbacks=none", "model.llm.pretrained=null",
    "model.vision.vae.pretrained=null", "model.vision.encoder.pretrained=null", "data.text_tokenizer=null",
    "model.llm.tie_word_embeddings=false", "data.task_weights.text=0.0",
]  # fmt: skip


def test_align_1p5b_recipe_is_the_released_one(make_cfg) -> None:
    cfg = make_cfg("align_1p5b", *TINY)
    assert cfg.stage.trainable == [
        "model.vision.compressor.*", "model.flow_head.*", "model.llm.hf.model.embed_tokens.*", "model.llm.hf.lm_head.*"
    ]  # fmt: skip
    assert not cfg.stage.new_token_rows_only and cfg.stage.cond_drop_prob == 0.2
    assert cfg.trainer.max_steps == 32000 and cfg.stage.optim.lr == 1e-4


def test_one_align_step_moves_the_im_start_logit_row(make_cfg) -> None:
    """With the untied head trainable the align stage can learn to emit `<im_start>` (the released recipe); the
    decoder layers stay frozen."""
    stage = build_stage(make_cfg("align_1p5b", *TINY))
    names = [n for n, _ in stage.named_parameters()]
    declared = match_trainable(names, stage.cfg.stage.trainable)
    im_start = stage.text_tokenizer.convert_tokens_to_ids("<im_start>")
    head = stage.model.llm.hf.lm_head.weight
    assert head is not stage.model.llm.hf.model.embed_tokens.weight and head.requires_grad
    row = head[im_start].detach().clone()
    before = _step(stage, _batch(stage))
    changed = {n for n, p in stage.named_parameters() if not torch.equal(p, before[n])}
    assert not torch.equal(head[im_start], row)
    assert "model.llm.hf.lm_head.weight" in changed and changed <= declared
    assert not any(n.startswith("model.llm.hf.model.layers.") for n in changed)


def test_all_text_guidance_dropout_is_the_released_one(make_cfg) -> None:
    """stage.sampling.unconditional=all_text: dropped generation rows become `<no_mean>` except `<im_start>`,
    `<im_end>` and the image positions (the released cfg_data_rate twin), the same twin guidance samples with."""
    stage = build_stage(
        make_cfg("tiny_generation", "stage.cond_drop_prob=1.0", "stage.sampling.unconditional=all_text")
    )
    batch = _batch(stage)
    ids = stage._drop_condition(batch)
    gen = (batch.task == 1)[:, None]
    keep = torch.isin(
        batch.input_ids, torch.tensor([stage.pipeline.builder.ids[t] for t in ("<im_start>", "<im_end>")])
    )
    blank = batch.pad_mask & gen & ~keep & (batch.block_ids == 0)
    assert bool(blank.any()) and bool((ids[blank] == stage.no_mean_id).all())
    assert torch.equal(ids[~blank], batch.input_ids[~blank])


def test_init_from_an_exported_directory(make_cfg, tmp_path) -> None:
    """stage.init_from takes an exported / converted directory (e.g. the released checkpoint after convert-official)."""
    source = build_stage(make_cfg("tiny_align"))
    with torch.no_grad():
        source.model.flow_head.hfi.gate[-1].weight.normal_()
    source.pipeline.save_pretrained(tmp_path / "export")
    stage = build_stage(make_cfg("tiny_align", f"stage.init_from={tmp_path / 'export'}"))
    for (name, got), want in zip(stage.model.state_dict().items(), source.model.state_dict().values(), strict=True):
        assert torch.equal(got, want), name
    cfg = compose("sft_1p5b_official")
    assert cfg.model.flow_head.time_scale == 1.0 and cfg.data.processing.label_rule == "official"
    assert cfg.stage.sampling.time_grid == "official" and cfg.stage.init_from == "exports/cheers_official"
