"""Autoregressive text decoding (greedy or sampled) from an interleaved prefix, with or without a KV cache.

The prefix (text and image-block embeddings, left padded) is run once; then one text token per step is appended.
With ``use_cache=True`` each step feeds only the new token against the cached keys/values; with
``use_cache=False`` the whole sequence is recomputed every step (the reference for tests and benchmarks).
Decoding stops per row at any id in ``eos_token_ids`` (pass ``<im_start>`` there to hand over to image
generation) and stops altogether once every row has stopped.

Shape legend:
    B batch, L prefix length, D model width, V vocab, T number of decoded steps.
"""

from collections.abc import Sequence

import torch

from cheers_pl.model.attention_mask import block_causal_mask, next_positions, positions_from_padding
from cheers_pl.model.llm import LLM


def _pick(
    logits_BV: torch.Tensor,
    do_sample: bool,
    temperature: float,
    top_k: int | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Choose one token per row: argmax, or a sample from the temperature-scaled (top-k) distribution."""
    if not do_sample:
        return logits_BV.argmax(dim=-1)
    logits_BV = logits_BV.float() / temperature
    if top_k is not None and top_k < logits_BV.shape[-1]:
        kth_B1 = logits_BV.topk(top_k, dim=-1).values[:, -1:]
        logits_BV = logits_BV.masked_fill(logits_BV < kth_B1, float("-inf"))
    probs_BV = logits_BV.softmax(dim=-1)
    return torch.multinomial(probs_BV, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def decode(
    llm: LLM,
    prefix_embeds_BLD: torch.Tensor,
    prefix_block_ids: torch.Tensor,
    prefix_pad_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: int | Sequence[int],
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Decode text after a (left-padded) prefix.

    Args:
        llm: The backbone.
        prefix_embeds_BLD: Prefix embeddings (text embeddings and projected image tokens).
        prefix_block_ids: Long ``B×L`` block ids (0 text, k > 0 image block k).
        prefix_pad_mask: Bool ``B×L``, True for real tokens; padding must be on the left.
        max_new_tokens: Maximum number of decoding steps.
        eos_token_ids: Id(s) that end a row (end of turn, or ``<im_start>`` to switch to image generation).
        do_sample: Sample instead of greedy argmax.
        temperature: Softmax temperature for sampling (> 0).
        top_k: Keep only the k most likely tokens when sampling (None = all).
        generator: RNG for sampling.
        use_cache: Reuse keys/values of earlier tokens (False recomputes the whole sequence each step).

    Returns:
        Long ``B×T`` new tokens, T <= max_new_tokens (fewer when every row stopped early); after a row's stop
        token its remaining entries are ``eos_token_ids[0]``.
    """
    eos_ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
    if not eos_ids:
        raise ValueError("eos_token_ids must name at least one token id")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature} must be > 0 when do_sample=True")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 or None")
    if prefix_pad_mask.shape[1] > 1 and (prefix_pad_mask[:, 1:].long() < prefix_pad_mask[:, :-1].long()).any():
        raise ValueError("prefix_pad_mask must use LEFT padding (no padding after a real token)")
    B = prefix_embeds_BLD.shape[0]
    device = prefix_embeds_BLD.device
    eos_ids_E = torch.tensor(eos_ids, device=device)

    embeds_BLD = prefix_embeds_BLD
    block_ids_BL, pad_mask_BL = prefix_block_ids, prefix_pad_mask
    out = llm(
        embeds_BLD,
        block_causal_mask(block_ids_BL, pad_mask_BL),
        positions_from_padding(pad_mask_BL),
        use_cache=use_cache,
        compute_logits=False,
    )
    cache = out.past_key_values
    last_hidden_B1D = out.hidden_BLD[:, -1:]

    finished_B = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = []
    for _ in range(max_new_tokens):
        next_B = _pick(llm.logits(last_hidden_B1D)[:, -1], do_sample, temperature, top_k, generator)
        next_B = torch.where(finished_B, eos_ids_E[0], next_B)
        tokens.append(next_B)
        finished_B = finished_B | torch.isin(next_B, eos_ids_E)
        if finished_B.all() or len(tokens) == max_new_tokens:
            break
        new_embed_B1D = llm.embed_tokens(next_B[:, None]).to(embeds_BLD.dtype)
        new_pos_B1 = next_positions(pad_mask_BL, 1)
        block_ids_BL = torch.cat([block_ids_BL, block_ids_BL.new_zeros(B, 1)], dim=1)
        pad_mask_BL = torch.cat([pad_mask_BL, pad_mask_BL.new_ones(B, 1)], dim=1)
        if use_cache:
            past_len = block_ids_BL.shape[1] - 1
            mask_B11K = block_causal_mask(block_ids_BL, pad_mask_BL, query_offset=past_len)
            out = llm(new_embed_B1D, mask_B11K, new_pos_B1, past_key_values=cache, compute_logits=False)
            last_hidden_B1D = out.hidden_BLD
        else:
            embeds_BLD = torch.cat([embeds_BLD, new_embed_B1D], dim=1)
            out = llm(
                embeds_BLD,
                block_causal_mask(block_ids_BL, pad_mask_BL),
                positions_from_padding(pad_mask_BL),
                compute_logits=False,
            )
            last_hidden_B1D = out.hidden_BLD[:, -1:]
    return torch.stack(tokens, dim=1)
