"""Tests for cheers_pl.model.projectors: token (un)shuffle identities and the token compressor."""

import pytest
import torch

from cheers_pl.model.projectors import (
    TokenCompressor,
    TokenCompressorConfig,
    shuffle_tokens,
    sincos_2d,
    unshuffle_tokens,
)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_unshuffle_shuffle_round_trip(factor: int) -> None:
    x = torch.randn(2, 8 * 16, 5)
    y = unshuffle_tokens(x, (8, 16), factor)
    assert y.shape == (2, 8 * 16 // factor**2, 5 * factor**2)
    assert torch.equal(shuffle_tokens(y, (8 // factor, 16 // factor), factor), x)
    z = torch.randn(2, 6, 5 * factor**2)
    assert torch.equal(unshuffle_tokens(shuffle_tokens(z, (2, 3), factor), (2 * factor, 3 * factor), factor), z)


def test_unshuffle_groups_spatial_blocks_in_pixel_unshuffle_order() -> None:
    # token (y, x) of a 4×4 grid carries the value 10·y + x in its single channel
    grid = torch.arange(4).view(4, 1) * 10 + torch.arange(4).view(1, 4)
    x = grid.flatten().view(1, 16, 1).float()
    y = unshuffle_tokens(x, (4, 4), 2)
    # coarse token (1, 0) = fine tokens (2, 0), (2, 1), (3, 0), (3, 1): channel i·f + j ↔ offset (i, j)
    assert y[0, 2].tolist() == [20.0, 21.0, 30.0, 31.0]


def test_grid_errors_state_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"grid_hw=\(3, 3\) has 9 cells but there are N=16"):
        unshuffle_tokens(torch.zeros(1, 16, 2), (3, 3), 1)
    with pytest.raises(ValueError, match=r"factor=2 must be >= 1 and divide grid_hw=\(3, 5\)"):
        unshuffle_tokens(torch.zeros(1, 15, 2), (3, 5), 2)
    with pytest.raises(ValueError, match="channels C=6"):
        shuffle_tokens(torch.zeros(1, 4, 6), (2, 2), 2)


def test_compressor_shapes_and_full_size() -> None:
    compressor = TokenCompressor(TokenCompressorConfig())
    out = compressor(torch.randn(2, 64, 128), (8, 8))
    assert out.shape == (2, 16, 128)
    assert compressor.output_grid((8, 8)) == (4, 4)
    with torch.device("meta"):
        full = TokenCompressor(TokenCompressorConfig(in_dim=1152, out_dim=1536, factor=2))
        assert full(torch.zeros(1, 1024, 1152), (32, 32)).shape == (1, 256, 1536)
    num_params = sum(p.numel() for p in full.parameters())
    assert 27e6 < num_params < 29e6  # DESIGN.md §1.4: understanding projector ≈ 28M


@pytest.mark.parametrize("factor", [1, 4])
def test_compression_factor_sets_token_count(factor: int) -> None:
    compressor = TokenCompressor(TokenCompressorConfig(factor=factor))
    assert compressor.mlp[0].in_features == 128 * factor**2
    assert compressor(torch.randn(1, 64, 128), (8, 8)).shape == (1, 64 // factor**2, 128)


def test_compressor_gradients_and_determinism() -> None:
    torch.manual_seed(4)
    a = TokenCompressor(TokenCompressorConfig())
    torch.manual_seed(4)
    b = TokenCompressor(TokenCompressorConfig())
    x = torch.randn(2, 64, 128, requires_grad=True)
    out = a(x, (8, 8))
    assert torch.equal(out, b(x, (8, 8)))
    out.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None and p.grad.abs().sum() > 0 for p in a.parameters())


def test_compressor_errors() -> None:
    compressor = TokenCompressor(TokenCompressorConfig())
    with pytest.raises(ValueError, match="in_dim=128 channels, got 32"):
        compressor(torch.randn(1, 64, 32), (8, 8))
    with pytest.raises(ValueError, match=r"factor=2 must divide the token grid \(5, 5\)"):
        compressor.output_grid((5, 5))
    with pytest.raises(ValueError, match="factor must be >= 1, got 0"):
        TokenCompressorConfig(factor=0)


def test_sincos_2d_encodes_row_in_first_half_and_column_in_second() -> None:
    table = sincos_2d((3, 5), 16)
    freq = 10000.0 ** -(torch.arange(4) / 4)
    assert table.shape == (15, 16)
    grid = table.view(3, 5, 16)
    # the row half is the same along a row, the column half the same down a column
    assert torch.equal(grid[:, :1, :8].expand(3, 5, 8), grid[..., :8])
    assert torch.equal(grid[:1, :, 8:].expand(3, 5, 8), grid[..., 8:])
    # every cell is distinct, and cell (0, 0) is cos 0 = 1, sin 0 = 0 on both axes
    assert torch.cdist(table, table).add(torch.eye(15)).min() > 0.1
    assert table[0].tolist() == [1.0] * 4 + [0.0] * 4 + [1.0] * 4 + [0.0] * 4
    # cell (2, 3): the row half is the 1-D sinusoid of 2, the column half that of 3
    assert torch.allclose(table[2 * 5 + 3, :8], torch.cat([torch.cos(2 * freq), torch.sin(2 * freq)]))
    assert torch.allclose(table[2 * 5 + 3, 8:], torch.cat([torch.cos(3 * freq), torch.sin(3 * freq)]))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d((2, 2), 6)


def test_compressor_position_table_is_added_to_the_output_only() -> None:
    torch.manual_seed(0)
    plain = TokenCompressor(TokenCompressorConfig(in_dim=8, out_dim=16, factor=2))
    placed = TokenCompressor(TokenCompressorConfig(in_dim=8, out_dim=16, factor=2, position_embedding="sincos2d"))
    placed.load_state_dict(plain.state_dict())  # no parameters of its own: the same state dict loads strictly
    x = torch.randn(2, 4 * 6, 8)
    assert torch.allclose(placed(x, (4, 6)) - plain(x, (4, 6)), sincos_2d((2, 3), 16).expand(2, 6, 16), atol=1e-6)
    with pytest.raises(ValueError, match="position_embedding must be one of"):
        TokenCompressorConfig(position_embedding="learned")
    with pytest.raises(ValueError, match="divisible by 4"):
        TokenCompressorConfig(out_dim=6, position_embedding="sincos2d")
