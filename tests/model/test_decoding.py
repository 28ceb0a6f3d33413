"""Tests for KV-cached / uncached greedy and sampled text decoding."""

import pytest
import torch

from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.decoding import decode
from cheers_pl.model.llm import LLM, LLMConfig


def _llm(attn: str = "sdpa") -> LLM:
    """Tiny LLM with enlarged random weights: the default init (std 0.02) decodes one token forever, which would
    make cached == uncached hold trivially."""
    torch.manual_seed(0)
    llm = LLM(LLMConfig(attn_implementation=attn)).eval()
    with torch.no_grad():
        for p in llm.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.3 if p is llm.hf.model.embed_tokens.weight else 0.1)
    return llm


def _prefix(llm: LLM) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, the second left padded by 3; each holds a 4-token image block between text."""
    torch.manual_seed(3)
    embeds = torch.randn(2, 10, llm.hidden_dim)
    block_ids = torch.tensor([[0, 0, 1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1, 0]])
    pad = torch.tensor([[True] * 10, [False] * 3 + [True] * 7])
    return embeds, block_ids, pad


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cached_greedy_equals_uncached(attn: str) -> None:
    llm = _llm(attn)
    embeds, block_ids, pad = _prefix(llm)
    cached = decode(llm, embeds, block_ids, pad, max_new_tokens=8, eos_token_ids=[511], use_cache=True)
    uncached = decode(llm, embeds, block_ids, pad, max_new_tokens=8, eos_token_ids=[511], use_cache=False)
    assert cached.shape == (2, 8) and cached.dtype == torch.long
    assert len(set(cached.flatten().tolist())) > 4  # a non-degenerate sequence
    assert torch.equal(cached, uncached)


def test_first_token_is_argmax_of_full_forward_and_padding_is_invisible() -> None:
    llm = _llm()
    embeds, block_ids, pad = _prefix(llm)
    out = llm(embeds, block_causal_mask(block_ids, pad), positions_from_padding(pad))
    tokens = decode(llm, embeds, block_ids, pad, max_new_tokens=4, eos_token_ids=511)
    assert torch.equal(tokens[:, 0], out.logits_BLV[:, -1].argmax(-1))
    # Row 1 decoded alone, without its padding, gives the same tokens.
    alone = decode(llm, embeds[1:, 3:], block_ids[1:, 3:], pad[1:, 3:], max_new_tokens=4, eos_token_ids=511)
    assert torch.equal(alone[0], tokens[1])


def test_rows_stop_at_eos_and_are_padded_with_it() -> None:
    llm = _llm()
    embeds, block_ids, pad = _prefix(llm)
    free = decode(llm, embeds, block_ids, pad, max_new_tokens=6, eos_token_ids=[511])
    assert not (free == 511).any()  # no stop in the free run, so the prefixes below are comparable
    row0 = free[0].tolist()
    k = next((i for i in range(1, 6) if row0[i] not in row0[:i]), 0)  # first fresh token of row 0 after step 0
    stop_id = row0[k]
    tokens = decode(llm, embeds, block_ids, pad, max_new_tokens=6, eos_token_ids=[stop_id, 511])
    assert tokens[0].tolist() == row0[: k + 1] + [stop_id] * (tokens.shape[1] - k - 1)
    hits = (free[1] == stop_id).nonzero()
    stop_1 = int(hits[0]) if len(hits) else 6
    assert torch.equal(tokens[1, : stop_1 + 1], free[1, : stop_1 + 1])  # row 1 unaffected until its own stop
    assert (tokens[1, stop_1 + 1 :] == stop_id).all()
    # When every row stops at its first token the loop ends after one step.
    both = decode(llm, embeds, block_ids, pad, max_new_tokens=6, eos_token_ids=free[:, 0].tolist())
    assert both.shape == (2, 1)


def test_sampling_is_reproducible_with_generator_and_cache_agnostic() -> None:
    llm = _llm()
    embeds, block_ids, pad = _prefix(llm)

    def run(seed: int, use_cache: bool) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return decode(
            llm,
            embeds,
            block_ids,
            pad,
            6,
            [511],
            do_sample=True,
            temperature=1.5,
            top_k=20,
            generator=g,
            use_cache=use_cache,
        )

    assert torch.equal(run(0, True), run(0, True))
    assert torch.equal(run(0, True), run(0, False))
    assert not torch.equal(run(0, True), run(1, True))


def test_top_k_one_equals_greedy() -> None:
    llm = _llm()
    embeds, block_ids, pad = _prefix(llm)
    greedy = decode(llm, embeds, block_ids, pad, 5, [511])
    sampled = decode(llm, embeds, block_ids, pad, 5, [511], do_sample=True, top_k=1, generator=torch.Generator())
    assert torch.equal(greedy, sampled)


def test_bad_arguments_raise() -> None:
    llm = _llm()
    embeds, block_ids, pad = _prefix(llm)
    with pytest.raises(ValueError, match="LEFT"):
        decode(llm, embeds, block_ids, pad.flip(1), 3, [511])
    with pytest.raises(ValueError, match="temperature"):
        decode(llm, embeds, block_ids, pad, 3, [511], do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="eos_token_ids"):
        decode(llm, embeds, block_ids, pad, 3, [])
    with pytest.raises(ValueError, match="max_new_tokens"):
        decode(llm, embeds, block_ids, pad, 0, [511])
