"""Tests for the Qwen2 backbone wrapper: mask pass-through, KV cache, vocab resizing, pretrained loading."""

import pytest
import torch

from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.llm import LLM, LLMConfig, truncate_cache

ATTN = ["sdpa", "eager"]


def _llm(**kwargs: object) -> LLM:
    torch.manual_seed(0)
    return LLM(LLMConfig(**kwargs)).eval()


def _text_inputs(ids_BL: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pad = torch.ones_like(ids_BL, dtype=torch.bool)
    return block_causal_mask(torch.zeros_like(ids_BL), pad), positions_from_padding(pad)


@pytest.mark.parametrize("attn", ATTN)
def test_pure_text_matches_plain_qwen2(attn: str) -> None:
    llm = _llm(attn_implementation=attn)
    ids = torch.randint(0, llm.vocab_size, (2, 7))
    mask, pos = _text_inputs(ids)
    out = llm(llm.embed_tokens(ids), mask, pos)
    ref = llm.hf(input_ids=ids).logits  # transformers' own causal mask and positions
    assert out.logits_BLV.shape == (2, 7, 512) and out.hidden_BLD.shape == (2, 7, 128)
    torch.testing.assert_close(out.logits_BLV, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(llm.logits(out.hidden_BLD), out.logits_BLV)
    assert llm(llm.embed_tokens(ids), mask, pos, compute_logits=False).logits_BLV is None


@pytest.mark.parametrize("attn", ATTN)
def test_left_padding_does_not_change_real_tokens(attn: str) -> None:
    llm = _llm(attn_implementation=attn)
    ids = torch.randint(0, llm.vocab_size, (1, 6))
    mask, pos = _text_inputs(ids)
    alone = llm(llm.embed_tokens(ids), mask, pos).logits_BLV
    padded_ids = torch.cat([torch.full((1, 3), 7), ids], dim=1)
    pad = torch.tensor([[False] * 3 + [True] * 6])
    out = llm(
        llm.embed_tokens(padded_ids), block_causal_mask(torch.zeros_like(padded_ids), pad), positions_from_padding(pad)
    )
    assert torch.isfinite(out.hidden_BLD).all()
    torch.testing.assert_close(out.logits_BLV[:, 3:], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ATTN)
def test_image_block_is_bidirectional_inside_causal_outside(attn: str) -> None:
    llm = _llm(attn_implementation=attn)
    block_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0]])
    pad = torch.ones_like(block_ids, dtype=torch.bool)
    mask, pos = block_causal_mask(block_ids, pad), positions_from_padding(pad)
    x = torch.randn(1, 9, 128)
    x2 = x.clone()
    x2[:, 5] += 1.0  # a LATER token of the image block
    h, h2 = llm(x, mask, pos).hidden_BLD, llm(x2, mask, pos).hidden_BLD
    assert not torch.allclose(h[:, 3], h2[:, 3], atol=1e-4)  # earlier token of the same block sees it
    torch.testing.assert_close(h[:, :3], h2[:, :3], atol=1e-6, rtol=0)  # text before the block does not
    # With a plain causal mask the earlier block token would not see it: the block structure comes from our mask.
    causal = block_causal_mask(torch.zeros_like(block_ids), pad)
    torch.testing.assert_close(llm(x, causal, pos).hidden_BLD[:, 3], llm(x2, causal, pos).hidden_BLD[:, 3])


@pytest.mark.parametrize("attn", ATTN)
def test_image_block_against_cached_prompt_equals_full_pass(attn: str) -> None:
    llm = _llm(attn_implementation=attn)
    # Batch of 2 with left padding: 6-column prompt, then an image block of 4 tokens appended to both rows.
    pad = torch.tensor([[True] * 6 + [True] * 4, [False, False] + [True] * 4 + [True] * 4])
    block_ids = torch.tensor([[0] * 6 + [1] * 4, [0] * 6 + [1] * 4])
    x = torch.randn(2, 10, 128)
    full = llm(x, block_causal_mask(block_ids, pad), positions_from_padding(pad)).hidden_BLD
    pos = positions_from_padding(pad)
    prompt = llm(x[:, :6], block_causal_mask(block_ids[:, :6], pad[:, :6]), pos[:, :6], use_cache=True)
    cache = prompt.past_key_values
    assert cache.get_seq_length() == 6
    mask_new = block_causal_mask(block_ids, pad, query_offset=6)
    assert mask_new.shape == (2, 1, 4, 10)
    step = llm(x[:, 6:], mask_new, pos[:, 6:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(step.hidden_BLD, full[:, 6:], atol=1e-5, rtol=0)
    torch.testing.assert_close(prompt.hidden_BLD[0], full[0, :6], atol=1e-5, rtol=0)
    # The flow sampler reuses the prompt cache every step: truncate, run a different block, compare again.
    truncate_cache(cache, 6)
    assert cache.get_seq_length() == 6
    x_other = x.clone()
    x_other[:, 6:] = torch.randn(2, 4, 128)
    full_other = llm(x_other, block_causal_mask(block_ids, pad), pos).hidden_BLD
    step2 = llm(x_other[:, 6:], mask_new, pos[:, 6:], past_key_values=cache)
    torch.testing.assert_close(step2.hidden_BLD, full_other[:, 6:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="truncate_cache"):
        truncate_cache(cache, 99)


def test_bad_mask_raises() -> None:
    llm = _llm()
    x = torch.randn(1, 4, 128)
    mask, pos = _text_inputs(torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="bool"):
        llm(x, mask.float(), pos)
    with pytest.raises(ValueError, match="attention_mask_B1QK has shape"):
        llm(x, mask[:, :, :3], pos)
    with pytest.raises(ValueError, match="position_ids_BL"):
        llm(x, mask, pos[:, :3])


@pytest.mark.parametrize("tie", [True, False])
def test_resize_vocab_keeps_old_rows_and_fills_mean(tie: bool) -> None:
    llm = _llm(tie_word_embeddings=tie)
    old_emb = llm.hf.model.embed_tokens.weight.detach().clone()
    old_head = llm.hf.lm_head.weight.detach().clone()
    llm.resize_vocab(512)
    assert torch.equal(llm.hf.model.embed_tokens.weight, old_emb)  # equal size: no-op
    llm.resize_vocab(517)
    emb, head = llm.hf.model.embed_tokens.weight, llm.hf.lm_head.weight
    assert llm.vocab_size == 517 and head.shape == (517, 128) and llm.hf.config.vocab_size == 517
    assert llm.is_tied == tie
    torch.testing.assert_close(emb[:512], old_emb, atol=0, rtol=0)
    torch.testing.assert_close(head[:512], old_head, atol=0, rtol=0)
    torch.testing.assert_close(emb[512:], old_emb.mean(0).expand(5, -1))
    torch.testing.assert_close(head[512:], old_head.mean(0).expand(5, -1))
    mask, pos = _text_inputs(torch.zeros(1, 3, dtype=torch.long))
    assert llm(llm.embed_tokens(torch.tensor([[1, 515, 516]])), mask, pos).logits_BLV.shape == (1, 3, 517)
    with pytest.raises(ValueError, match="new_size"):
        llm.resize_vocab(0)


def test_save_pretrained_roundtrip_and_untie(tmp_path: object) -> None:
    llm = _llm()
    llm.hf.save_pretrained(str(tmp_path))
    ids = torch.randint(0, 512, (2, 5))
    mask, pos = _text_inputs(ids)
    ref = llm(llm.embed_tokens(ids), mask, pos).logits_BLV

    loaded = LLM(LLMConfig(pretrained=str(tmp_path))).eval()
    assert loaded.is_tied
    assert torch.equal(loaded(loaded.embed_tokens(ids), mask, pos).logits_BLV, ref)

    untied = LLM(LLMConfig(pretrained=str(tmp_path), tie_word_embeddings=False)).eval()
    assert not untied.is_tied and torch.equal(untied.hf.lm_head.weight, untied.hf.model.embed_tokens.weight)
    assert torch.equal(untied(untied.embed_tokens(ids), mask, pos).logits_BLV, ref)
    with torch.no_grad():  # the untied head must survive its own save/load round trip
        untied.hf.lm_head.weight.mul_(2.0)
    untied.hf.save_pretrained(str(tmp_path / "untied"))
    again = LLM(LLMConfig(pretrained=str(tmp_path / "untied"), tie_word_embeddings=False))
    assert not again.is_tied and torch.equal(again.hf.lm_head.weight, untied.hf.lm_head.weight)

    with pytest.raises(ValueError, match="LLMConfig.dim=64"):
        LLM(LLMConfig(pretrained=str(tmp_path), dim=64))
    with pytest.warns(UserWarning, match="rope_theta"):
        LLM(LLMConfig(pretrained=str(tmp_path), rope_theta=1e4))


@pytest.mark.parametrize("tie", [True, False])
def test_gradients_reach_every_parameter(tie: bool) -> None:
    llm = _llm(tie_word_embeddings=tie).train()
    ids = torch.randint(0, 512, (2, 6))
    block_ids = torch.tensor([[0, 0, 1, 1, 0, 0]] * 2)
    pad = torch.ones_like(ids, dtype=torch.bool)
    out = llm(llm.embed_tokens(ids), block_causal_mask(block_ids, pad), positions_from_padding(pad))
    (out.logits_BLV.logsumexp(-1).sum() + out.hidden_BLD.pow(2).sum()).backward()
    for name, p in llm.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_same_gradients() -> None:
    grads = []
    for ckpt in (False, True):
        llm = _llm(gradient_checkpointing=ckpt).train()
        assert llm.hf.is_activation_checkpointing == ckpt
        torch.manual_seed(1)
        x = torch.randn(1, 5, 128)
        mask, pos = _text_inputs(torch.zeros(1, 5, dtype=torch.long))
        llm(x, mask, pos).logits_BLV.sum().backward()
        grads.append(llm.hf.model.layers[0].self_attn.q_proj.weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_determinism_under_seed() -> None:
    a, b = _llm(), _llm()
    ids = torch.randint(0, 512, (1, 4))
    mask, pos = _text_inputs(ids)
    assert torch.equal(a(a.embed_tokens(ids), mask, pos).logits_BLV, b(b.embed_tokens(ids), mask, pos).logits_BLV)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"dim": 130}, "num_heads"),
        ({"num_kv_heads": 3}, "num_kv_heads"),
        ({"attn_implementation": "flash"}, "attn_implementation"),
        ({"num_layers": 0}, "num_layers"),
        ({"dim": 12, "num_heads": 4}, "must be even"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LLMConfig(**kwargs)


def test_full_size_builds_on_meta_with_qwen2p5_1p5b_parameter_count() -> None:
    full = {"vocab_size": 151936, "dim": 1536, "num_layers": 28, "num_heads": 12, "num_kv_heads": 2, "mlp_dim": 8960}
    with torch.device("meta"):
        tied = LLM(LLMConfig(**full))
        untied = LLM(LLMConfig(**full, tie_word_embeddings=False))
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert 1.53e9 < n_tied < 1.55e9  # Qwen2.5-1.5B: 1.54B
    assert n_untied - n_tied == 151936 * 1536  # the untied LM head: 0.23B (DESIGN.md §1.4)


@pytest.mark.gpu
def test_bf16_cuda_cached_block_is_finite_and_close_to_full_pass() -> None:
    llm = _llm().cuda().to(torch.bfloat16)
    pad = torch.tensor([[True] * 10, [False] * 3 + [True] * 7], device="cuda")
    block_ids = torch.tensor([[0] * 6 + [1] * 4] * 2, device="cuda")
    pos = positions_from_padding(pad)
    x = torch.randn(2, 10, 128, device="cuda", dtype=torch.bfloat16)
    full = llm(x, block_causal_mask(block_ids, pad), pos).hidden_BLD
    cache = llm(x[:, :6], block_causal_mask(block_ids[:, :6], pad[:, :6]), pos[:, :6], use_cache=True).past_key_values
    step = llm(x[:, 6:], block_causal_mask(block_ids, pad, query_offset=6), pos[:, 6:], past_key_values=cache)
    assert torch.isfinite(full).all() and torch.isfinite(step.hidden_BLD).all()
    torch.testing.assert_close(step.hidden_BLD.float(), full[:, 6:].float(), atol=5e-2, rtol=5e-2)
