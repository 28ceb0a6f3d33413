"""Align and generation stages: what trains, guidance dropout, init_from (cheers_pl/stage/multimodal.py)."""

from pathlib import Path

import pytest
import torch

from cheers_pl.data.datamodule import CheersDataModule
from cheers_pl.data.tasks import TASK_GENERATION
from cheers_pl.data.text_tokenizer import CHEERS_SPECIAL_TOKENS
from cheers_pl.stage import build_stage
from cheers_pl.stage.base import match_trainable


def _batch(stage):
    dm = CheersDataModule(stage.cfg.data)
    return next(iter(dm.val_dataloader()))


def _step(stage, batch) -> dict[str, torch.Tensor]:
    before = {n: p.detach().clone() for n, p in stage.named_parameters()}
    opt = torch.optim.SGD([p for p in stage.parameters() if p.requires_grad], lr=1.0)
    stage.train()
    loss = stage.training_step(batch, 0)
    loss.backward()
    opt.step()
    return before


def test_align_step_changes_exactly_the_declared_parameters(make_cfg) -> None:
    cfg = make_cfg("tiny_align", "stage.trainable=[model.vision.compressor.*,model.flow_head.*]")
    stage = build_stage(cfg)
    names = [n for n, _ in stage.named_parameters()]
    declared = match_trainable(names, cfg.stage.trainable)
    before = _step(stage, _batch(stage))
    changed = {n for n, p in stage.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= declared
    assert {n for n in changed if n.startswith("model.flow_head.")} and {n for n in changed if "compressor" in n}
    assert not any(n.startswith(("model.llm.", "model.vision.vae.", "model.vision.encoder.")) for n in changed)


def test_frozen_modules_stay_in_eval_mode(make_cfg) -> None:
    stage = build_stage(make_cfg("tiny_align", "stage.trainable=[model.flow_head.*]"))
    stage.train()
    assert not stage.model.llm.training and not stage.model.vision.encoder.training
    assert stage.model.flow_head.training


TRAINABLE_SETS = ["[model.flow_head.*]", "[model.flow_head.hfi.*,model.llm.hf.model.layers.1.mlp.*]", "[]"]


@pytest.mark.parametrize("trainable", TRAINABLE_SETS)
def test_train_mode_equals_the_per_module_definition(make_cfg, trainable: str) -> None:
    """Every module that holds parameters, none trainable, is in eval mode and every other module in train mode:
    the definition, checked module by module against `train()`'s one-pass version."""
    stage = build_stage(make_cfg("tiny_align", f"stage.trainable={trainable}"))
    stage.eval().train()
    frozen = set()
    for module in stage.modules():
        params = list(module.parameters())
        if module is not stage and params and not any(p.requires_grad for p in params):
            frozen.update(id(m) for m in module.modules())
    modes = [(name, m.training) for name, m in stage.named_modules()]
    assert modes == [(name, id(m) not in frozen) for name, m in stage.named_modules()]
    assert any(training for _, training in modes) and (trainable == "[]" or not all(t for _, t in modes))


def test_new_token_rows_only_keeps_pretrained_rows(make_cfg) -> None:
    cfg = make_cfg(
        "tiny_align", "stage.trainable=[model.llm.hf.model.embed_tokens.*]", "stage.new_token_rows_only=true"
    )
    stage = build_stage(cfg)
    weight = stage.model.llm.hf.get_input_embeddings().weight
    old = weight.detach().clone()
    _step(stage, _batch(stage))
    new = torch.zeros(weight.shape[0], dtype=torch.bool)
    new[stage.text_tokenizer.convert_tokens_to_ids(list(CHEERS_SPECIAL_TOKENS))] = True
    assert torch.equal(weight[~new], old[~new])
    assert not torch.equal(weight[new], old[new])


def test_cond_drop_prob_one_blanks_every_generation_prompt(make_cfg) -> None:
    stage = build_stage(make_cfg("tiny_generation", "stage.cond_drop_prob=1.0"))
    batch = _batch(stage)
    ids = stage._drop_condition(batch)
    gen = batch.task == TASK_GENERATION
    assert bool(gen.any())
    prompt = batch.prompt_mask & gen[:, None]
    assert bool((ids[prompt] == stage.no_mean_id).all())
    assert torch.equal(ids[~prompt], batch.input_ids[~prompt])
    assert bool((stage._drop_condition(batch)[batch.prompt_mask & ~gen[:, None]] != stage.no_mean_id).all())


def test_cond_drop_prob_zero_keeps_prompts(make_cfg) -> None:
    stage = build_stage(make_cfg("tiny_generation", "stage.cond_drop_prob=0.0"))
    batch = _batch(stage)
    assert torch.equal(stage._drop_condition(batch), batch.input_ids)


def test_init_from_loads_exactly_the_model_weights(make_cfg, tmp_path: Path) -> None:
    source = build_stage(make_cfg("tiny_align"))
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    tokenizer_state = {k: v for k, v in state.items() if k.startswith("model.vision.")}
    tokenizer_state["lpips.net.weight"] = torch.zeros(3)  # a non-model key of another stage: must be ignored
    path = tmp_path / "tok.ckpt"
    torch.save({"state_dict": tokenizer_state}, path)
    target = build_stage(make_cfg("tiny_align", f"stage.init_from={path}"))
    own = target.state_dict()
    for k, v in own.items():
        if k.startswith("model.vision."):
            assert torch.equal(v, state[k]), k
        else:
            assert not torch.equal(v, state[k]) or not v.is_floating_point(), k


def test_losses_are_finite_and_flow_only_on_generation_rows(make_cfg) -> None:
    stage = build_stage(make_cfg("tiny_generation"))
    batch = _batch(stage)
    losses = stage.losses(batch, batch.input_ids, stage._flow_times(batch))
    assert all(torch.isfinite(v) for v in losses.values())
    batch.task[:] = 0  # no generation row: the flow loss is zero
    assert float(stage.losses(batch, batch.input_ids, stage._flow_times(batch))["loss_flow"]) == 0.0


def test_public_methods(make_cfg) -> None:
    stage = build_stage(make_cfg("tiny_generation")).eval()
    out = stage.generate_images(["a red circle", "a blue square"], seed=1, num_steps=2, record_gates=True)
    assert out.images.shape == (2, 3, 64, 64) and out.gates is not None
    assert len(stage.answer(out.images, ["what color is the circle?", "what shape is it?"], max_new_tokens=3)) == 2
    assert stage.semantic_features(out.images).shape == (2, 128)
    img, txt = stage.contrastive_embed(out.images, ["a red circle", "a blue square"])
    assert img.shape == txt.shape == (2, 64)


def test_init_from_shape_mismatch_is_an_error_unless_skipped(make_cfg, tmp_path: Path) -> None:
    source = build_stage(make_cfg("tiny_align"))
    path = tmp_path / "tok.ckpt"
    torch.save({"state_dict": source.state_dict()}, path)
    variant = ("model.vision.compression=1", "data.num_image_tokens=64", "data.max_seq_len=192")
    variant = (*variant, f"stage.init_from={path}")
    with pytest.raises(ValueError, match="compressor"):
        build_stage(make_cfg("tiny_align", *variant))
    with pytest.warns(UserWarning, match="changed shape"):
        stage = build_stage(make_cfg("tiny_align", "stage.init_shape_mismatch=skip", *variant))
    own, src = stage.state_dict(), source.state_dict()
    assert torch.equal(own["model.llm.hf.model.norm.weight"], src["model.llm.hf.model.norm.weight"])


def test_flow_loss_covers_generation_rows_and_matches_the_manual_objective(make_cfg) -> None:
    """The flow head runs on generation rows only; the loss equals MSE(v, x1 − x0) over them, CE over all rows."""
    from cheers_pl.objective.flow_matching import interpolate

    stage = build_stage(make_cfg("tiny_generation")).eval()
    batch = _batch(stage)
    gen = (batch.task == TASK_GENERATION) & (batch.block_ids > 0).any(dim=1)
    assert gen.any() and (~gen & (batch.block_ids > 0).any(dim=1)).any()  # both kinds of image row
    g = torch.Generator().manual_seed(0)
    t = torch.where(gen, torch.rand(len(batch), generator=g), torch.ones(len(batch)))
    x0 = torch.randn(len(batch), 32, 8, 8, generator=g)
    with torch.no_grad():
        losses = stage.losses(batch, batch.input_ids, t, x0=x0)
        rows = stage.model.image_positions(batch.block_ids)[0]
        x1 = stage.model.vision.encode(batch.images[rows])
        z_t = torch.where(gen[rows, None, None, None], interpolate(x0[rows], x1, t[rows]), x1)
        out = stage.model(batch.input_ids, batch.pad_mask, batch.block_ids, z_t, t[rows])
    is_gen = gen[rows]
    manual = (out.velocity[is_gen] - (x1 - x0[rows])[is_gen]).pow(2).flatten(1).mean(1).mean()
    torch.testing.assert_close(losses["loss_flow"], manual, rtol=1e-5, atol=1e-6)
    from cheers_pl.objective.lm import lm_loss

    torch.testing.assert_close(losses["loss_lm"], lm_loss(out.logits, batch.labels), rtol=1e-5, atol=1e-6)


def test_frozen_cache_reuses_latents_and_semantic_tokens_with_equal_losses(make_cfg) -> None:
    plain = build_stage(make_cfg("tiny_align", "stage.cache_frozen=false")).eval()
    cached = build_stage(make_cfg("tiny_align", "stage.cache_frozen=true")).eval()
    cached.load_state_dict(plain.state_dict())
    batch = _batch(plain)
    t = torch.ones(len(batch))
    x0 = torch.randn(len(batch), 32, 8, 8)
    assert cached.semantic_frozen and cached.semantic_cache.enabled and not plain.latent_cache.enabled
    with torch.no_grad():
        want = plain.losses(batch, batch.input_ids, t, x0=x0)
        first = cached.losses(batch, batch.input_ids, t, x0=x0)
        again = cached.losses(batch, batch.input_ids, t, x0=x0)
    assert cached.latent_cache.hits == cached.latent_cache.misses > 0  # the second pass hit every row
    assert cached.semantic_cache.hits == cached.semantic_cache.misses > 0
    for key in want:
        torch.testing.assert_close(first[key], want[key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(again[key], first[key], rtol=1e-5, atol=1e-6)
    trainable_encoder = build_stage(
        make_cfg("tiny_align", "stage.cache_frozen=true", "stage.trainable=[model.vision.encoder.*]")
    )
    assert trainable_encoder.latent_cache.enabled and not trainable_encoder.semantic_cache.enabled
    # while only D is frozen, D(x1) of understanding rows is cached instead: same losses, the encoder still learns
    assert trainable_encoder.decoded_cache.enabled and not cached.decoded_cache.enabled
    trainable_encoder.load_state_dict(plain.state_dict())
    trainable_encoder.eval()
    for _ in range(2):
        with torch.no_grad():
            got = trainable_encoder.losses(batch, batch.input_ids, t, x0=x0)
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    assert trainable_encoder.decoded_cache.hits == trainable_encoder.decoded_cache.misses > 0


def test_a_batch_without_generation_rows_still_runs_the_flow_head_at_weight_zero(make_cfg) -> None:
    """Every rank runs every module each step (FSDP): the head runs on one understanding row, its loss is 0."""
    stage = build_stage(make_cfg("tiny_align")).eval()
    batch = _batch(stage)
    und = [i for i, t in enumerate(batch.task.tolist()) if t != TASK_GENERATION]
    from cheers_pl.data.batch import Batch

    sub = Batch(**{f: (v[und] if isinstance(v, torch.Tensor) else v) for f, v in vars(batch).items()})
    sub.keys, sub.meta = [batch.keys[i] for i in und], [batch.meta[i] for i in und]
    calls = []
    stage.model.flow_head.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        losses = stage.losses(sub, sub.input_ids, torch.ones(len(sub)))
    assert calls == [1] and losses["loss_flow"] == 0 and losses["loss_lm"] > 0


def test_init_keep_leaves_the_matched_tensors_at_their_init(make_cfg, tmp_path: Path) -> None:
    """`stage.init_keep` trains a component again from scratch beside loaded ones; a glob matching nothing is an
    error (a typo must not silently load everything)."""
    source = build_stage(make_cfg("tiny_align"))
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in source.state_dict().items()}
    path = tmp_path / "src.ckpt"
    torch.save({"state_dict": state}, path)
    torch.manual_seed(0)
    fresh = build_stage(make_cfg("tiny_align")).state_dict()
    torch.manual_seed(0)
    stage = build_stage(make_cfg("tiny_align", f"stage.init_from={path}", "stage.init_keep=[model.vision.encoder.*]"))
    for k, v in stage.state_dict().items():
        if k.startswith("model.vision.") and v.is_floating_point():  # (tied LLM tensors got two random values)
            expected = fresh[k] if k.startswith("model.vision.encoder.") else state[k]
            assert torch.equal(v, expected), k
    with pytest.raises(ValueError, match="init_keep"):
        build_stage(make_cfg("tiny_align", f"stage.init_from={path}", "stage.init_keep=[model.vision.encodr.*]"))
