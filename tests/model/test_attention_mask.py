"""Tests for the block-causal attention mask and padding-aware positions."""

import pytest
import torch
import torch.nn.functional as F

from cheers_pl.model.attention_mask import block_causal_mask, next_positions, positions_from_padding

# Row 0: T T [I1 I1 I1] T T [I2 I2] T        (no padding)
# Row 1: P P T [I1 I1] T [I2 I2 I2] T         (two left-padding tokens)
BLOCK_IDS = torch.tensor([[0, 0, 1, 1, 1, 0, 0, 2, 2, 0], [0, 0, 0, 1, 1, 0, 2, 2, 2, 0]])
PAD_MASK = torch.tensor([[True] * 10, [False, False] + [True] * 8])


def _rule(b: int, i: int, j: int) -> bool:
    blocks, pad = BLOCK_IDS[b].tolist(), PAD_MASK[b].tolist()
    if i == j:
        return True
    return (j <= i or blocks[i] == blocks[j] != 0) and pad[j]


def test_mask_matches_rule_for_every_pair() -> None:
    mask = block_causal_mask(BLOCK_IDS, PAD_MASK)
    assert mask.shape == (2, 1, 10, 10) and mask.dtype == torch.bool
    for b in range(2):
        for i in range(10):
            for j in range(10):
                assert bool(mask[b, 0, i, j]) == _rule(b, i, j), (b, i, j)


def test_mask_hand_checked_entries() -> None:
    m = block_causal_mask(BLOCK_IDS, PAD_MASK)[:, 0]
    assert m[0, 2, 4] and m[0, 4, 2]  # first image block is bidirectional
    assert m[0, 7, 8] and m[0, 8, 7]  # second image block too
    assert not m[0, 2, 7] and not m[0, 4, 8]  # first block never sees the later block
    assert m[0, 7, 3]  # later block sees the earlier block causally
    assert not m[0, 1, 2] and not m[0, 5, 6]  # text is causal
    assert not m[0, 4, 5]  # image tokens do not see the text after the block
    assert m[0, 9].all()  # last text token sees everything
    # Padding keys are never attended by real queries; padding queries see only themselves.
    assert not m[1, 2:, :2].any()
    assert m[1, 0].tolist() == [True] + [False] * 9
    assert m[1, 1].tolist() == [False, True] + [False] * 8
    assert m[1, 6, 8] and not m[1, 5, 6]


def test_query_offset_equals_rows_of_full_mask() -> None:
    full = block_causal_mask(BLOCK_IDS, PAD_MASK)
    for offset, num in [(7, 2), (7, None), (9, 1), (0, 3)]:
        part = block_causal_mask(BLOCK_IDS, PAD_MASK, query_offset=offset, num_queries=num)
        stop = 10 if num is None else offset + num
        assert torch.equal(part, full[:, :, offset:stop])


def test_sdpa_with_mask_has_no_nan_and_ignores_padding() -> None:
    mask = block_causal_mask(BLOCK_IDS, PAD_MASK)
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.isfinite(out).all()
    # Changing the padded keys/values must not change any real query's output.
    k2, v2 = k.clone(), v.clone()
    k2[1, :, :2], v2[1, :, :2] = 100.0, -100.0
    out2 = F.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
    torch.testing.assert_close(out2[1, :, 2:], out[1, :, 2:])


def test_positions_count_only_real_tokens() -> None:
    pos = positions_from_padding(PAD_MASK)
    assert pos[0].tolist() == list(range(10))
    assert pos[1].tolist() == [0, 0] + list(range(8))
    assert next_positions(PAD_MASK, 3).tolist() == [[10, 11, 12], [8, 9, 10]]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="pad_mask_BL"):
        block_causal_mask(BLOCK_IDS, PAD_MASK.long())
    with pytest.raises(ValueError, match="B×L"):
        block_causal_mask(BLOCK_IDS[0], PAD_MASK[0])
    with pytest.raises(ValueError, match="query_offset"):
        block_causal_mask(BLOCK_IDS, PAD_MASK, query_offset=9, num_queries=2)
    with pytest.raises(ValueError, match="pad_mask_BL"):
        positions_from_padding(PAD_MASK.long())


def test_segments_see_the_prefix_and_themselves_at_single_sequence_positions() -> None:
    """Row: 1 pad, prefix of 3 (image block at columns 2..3), segment 1 of 2 tokens, segment 2 of 3 tokens."""
    pad = torch.tensor([[False, True, True, True, True, True, True, True, True]])
    blocks = torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0, 0]])
    segments = torch.tensor([[0, 0, 0, 0, 1, 1, 2, 2, 2]])
    m = block_causal_mask(blocks, pad, segment_ids_BL=segments)[0, 0]
    assert m[5, 1:6].all() and not m[5, 6:].any()  # segment 1 sees the prefix and itself
    assert m[8, 1:4].all() and not m[8, 4:6].any() and m[8, 6:9].all()  # segment 2 skips segment 1
    assert m[2, 3] and not m[2, 4]  # the image block stays bidirectional, the prefix never sees a segment
    pos = positions_from_padding(pad, segments)[0].tolist()
    assert pos == [0, 0, 1, 2, 3, 4, 3, 4, 5]
    assert positions_from_padding(pad, torch.zeros_like(segments)).tolist() == positions_from_padding(pad).tolist()
    with pytest.raises(ValueError, match="segment_ids_BL"):
        block_causal_mask(blocks, pad, segment_ids_BL=segments[:, :4])
