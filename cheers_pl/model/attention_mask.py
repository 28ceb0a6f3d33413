"""Attention masks for interleaved text / image sequences: causal text, bidirectional image blocks.

Cheers runs one LLM sequence in which text tokens attend causally while the tokens of each image block
attend to each other bidirectionally (and causally to everything before the block). This module builds
that mask as a boolean tensor (True = may attend) plus the matching 1-D position ids.

Conventions:
    * ``block_ids``: 0 = text (special tokens such as ``<im_start>``/``<im_end>`` included), k > 0 = the
      k-th image block of the sample. A block id must be unique per block within a sample; two separate
      image blocks that shared an id would see each other bidirectionally.
    * Padding is on the LEFT (``pad_mask`` False at the start of short rows). All rows then end at the same
      column, so batched decoding appends every row's next token at the same index and one KV cache serves the
      whole batch. Padding keys are never attended. A padding query attends to itself only, so no softmax row
      is empty (an all-masked row makes sdpa return NaN); its output is garbage and must be ignored.
    * Positions are plain 1-D positions counting only real tokens (the first real token is 0), so a
      left-padded row gets exactly the positions it would have without padding.
    * ``segment_ids`` (optional, training only) pack several continuations of one shared prefix into a row:
      0 = the shared prefix (and padding), k > 0 = the k-th continuation. A token of continuation k sees the
      prefix and the earlier tokens of continuation k only, and its position counts only those tokens, so every
      continuation is computed exactly as if it followed the prefix alone (several questions about one image in
      one row; `cheers_pl.data.processing.SequenceBuilder.understanding_packed`). The prefix must come first.

References:
    Cheers, arXiv 2603.12793, §LLM backbone (causal attention, bidirectional within each image block).

Shape legend:
    B batch, L full sequence length (cached tokens + new tokens), Q number of query tokens, K = L keys.
"""

import torch


def block_causal_mask(
    block_ids_BL: torch.Tensor,
    pad_mask_BL: torch.Tensor,
    query_offset: int = 0,
    num_queries: int | None = None,
    segment_ids_BL: torch.Tensor | None = None,
) -> torch.Tensor:
    """Build the boolean attention mask of an interleaved text / image sequence.

    Query i may attend key j iff ``(j <= i or block_ids[i] == block_ids[j] != 0) and pad_mask[j]``, and, with
    ``segment_ids``, ``segment_ids[j] in (0, segment_ids[i])``; in addition every query may attend itself (keeps
    padded query rows finite).

    The queries are the positions ``query_offset .. query_offset + num_queries - 1`` of the full sequence, so the
    same function builds the mask of a full forward pass (``query_offset=0``) and of an incremental pass of
    ``num_queries`` new tokens against a KV cache holding the first ``query_offset`` tokens (prompt prefill,
    image block against a cached prompt, one decoded token at a time).

    Args:
        block_ids_BL: Long block ids of the FULL sequence (cached + new tokens), 0 = text, k > 0 = image block k.
        pad_mask_BL: Bool, True for real tokens, False for (left) padding, over the full sequence.
        query_offset: Index of the first query token in the full sequence (= current cache length).
        num_queries: Number of query tokens; default ``L - query_offset`` (all remaining tokens).
        segment_ids_BL: Optional long segment ids of the full sequence (0 = shared prefix, k > 0 = continuation k).

    Returns:
        Bool mask ``B×1×Q×L``, True = may attend.

    Raises:
        ValueError: If shapes, dtypes or the query range are inconsistent.
    """
    if block_ids_BL.ndim != 2 or pad_mask_BL.shape != block_ids_BL.shape:
        raise ValueError(
            f"block_ids_BL and pad_mask_BL must both be B×L; got {tuple(block_ids_BL.shape)} and "
            f"{tuple(pad_mask_BL.shape)}"
        )
    if pad_mask_BL.dtype != torch.bool:
        raise ValueError(f"pad_mask_BL must be a bool tensor, got dtype {pad_mask_BL.dtype}")
    if block_ids_BL.is_floating_point() or block_ids_BL.dtype == torch.bool:
        raise ValueError(f"block_ids_BL must be an integer tensor, got dtype {block_ids_BL.dtype}")
    L = block_ids_BL.shape[1]
    if num_queries is None:
        num_queries = L - query_offset
    if query_offset < 0 or num_queries < 1 or query_offset + num_queries > L:
        raise ValueError(
            f"query range [query_offset={query_offset}, +num_queries={num_queries}) must lie inside the sequence "
            f"of length {L}"
        )
    device = block_ids_BL.device
    q_idx_Q = torch.arange(query_offset, query_offset + num_queries, device=device)
    k_idx_L = torch.arange(L, device=device)

    causal_QL = k_idx_L[None, :] <= q_idx_Q[:, None]
    q_block_BQ = block_ids_BL[:, query_offset : query_offset + num_queries]
    same_block_BQL = (q_block_BQ[:, :, None] == block_ids_BL[:, None, :]) & (q_block_BQ[:, :, None] != 0)
    allowed_BQL = (causal_QL[None] | same_block_BQL) & pad_mask_BL[:, None, :]
    if segment_ids_BL is not None:
        if segment_ids_BL.shape != block_ids_BL.shape:
            raise ValueError(f"segment_ids_BL must be B×L like block_ids_BL, got {tuple(segment_ids_BL.shape)}")
        q_seg_BQ = segment_ids_BL[:, query_offset : query_offset + num_queries]
        k_seg_BL = segment_ids_BL[:, None, :]
        allowed_BQL = allowed_BQL & ((k_seg_BL == 0) | (k_seg_BL == q_seg_BQ[:, :, None]))
    self_QL = k_idx_L[None, :] == q_idx_Q[:, None]
    return (allowed_BQL | self_QL[None]).unsqueeze(1)


def positions_from_padding(pad_mask_BL: torch.Tensor, segment_ids_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Plain 1-D position ids that count only real tokens (padding gets position 0).

    Args:
        pad_mask_BL: Bool, True for real tokens.
        segment_ids_BL: Optional long segment ids (see the module docstring): a token of continuation k counts the
            shared prefix and the tokens of continuation k only.

    Returns:
        Long ``B×L`` position ids; the first real token of every row is 0.
    """
    if pad_mask_BL.dtype != torch.bool or pad_mask_BL.ndim != 2:
        raise ValueError(
            f"pad_mask_BL must be a 2-D bool tensor, got dtype {pad_mask_BL.dtype} shape {tuple(pad_mask_BL.shape)}"
        )
    real_BL = pad_mask_BL.long()
    if segment_ids_BL is None:
        return (real_BL.cumsum(dim=1) - 1).clamp(min=0)
    if segment_ids_BL.shape != pad_mask_BL.shape:
        raise ValueError(f"segment_ids_BL must be B×L like pad_mask_BL, got {tuple(segment_ids_BL.shape)}")
    prefix_BL = real_BL * (segment_ids_BL == 0)
    positions_BL = (prefix_BL.cumsum(dim=1) - 1).clamp(min=0)
    for k in segment_ids_BL.unique().tolist():
        if k == 0:
            continue
        in_k_BL = segment_ids_BL == k
        count_BL = (prefix_BL + real_BL * in_k_BL).cumsum(dim=1) - 1
        positions_BL = torch.where(in_k_BL, count_BL.clamp(min=0), positions_BL)
    return positions_BL


def next_positions(pad_mask_BL: torch.Tensor, num_new: int = 1) -> torch.Tensor:
    """Positions of ``num_new`` real tokens appended after a (left-padded) sequence.

    Args:
        pad_mask_BL: Bool mask of the sequence so far, True for real tokens.
        num_new: Number of tokens to be appended.

    Returns:
        Long ``B×num_new`` position ids continuing each row's real-token count.
    """
    start_B = pad_mask_BL.long().sum(dim=1)
    return start_B[:, None] + torch.arange(num_new, device=pad_mask_BL.device)[None, :]
