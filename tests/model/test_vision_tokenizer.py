"""Tests for cheers_pl.model.vision_tokenizer: geometry, frozen VAE, the semantic path, both encoder inputs."""

import pytest
import torch

from cheers_pl.model.vae import VAEConfig
from cheers_pl.model.vision_encoder import VisionEncoderConfig
from cheers_pl.model.vision_tokenizer import VisionTokenizer, VisionTokenizerConfig, full_vision_tokenizer_config


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("encoder_input", ["pixels", "latents"])
def test_tiny_shapes(encoder_input: str) -> None:
    tok = VisionTokenizer(VisionTokenizerConfig(encoder_input=encoder_input))
    x1 = tok.encode(_images())
    feats = tok.features(x1)
    llm_tokens, detail = tok(x1)
    assert x1.shape == (2, 32, 8, 8)
    assert llm_tokens.shape == (2, 16, 128) and detail.shape == feats.semantic.shape == (2, 64, 128)
    assert (tok.num_image_tokens, tok.grid_hw, tok.semantic_grid_hw) == (16, (4, 4), (8, 8))
    assert (tok.latent_dim, tok.detail_dim) == (32, 128)
    if encoder_input == "pixels":
        assert feats.decoded.shape == (2, 3, 64, 64) and tok.latent_embed is None
    else:
        assert feats.decoded is None and tok.pixel_decoder is None and tok.latent_embed is not None


def test_full_size_geometry_on_meta_device() -> None:
    with torch.device("meta"):
        tok = VisionTokenizer(full_vision_tokenizer_config())
        x1 = tok.encode(torch.zeros(1, 3, 512, 512))
        llm_tokens, detail = tok(x1)
    assert x1.shape == (1, 128, 32, 32)
    assert detail.shape == (1, 1024, 1152) and llm_tokens.shape == (1, 256, 1536)
    assert tok.num_image_tokens == 256 and tok.semantic_grid_hw == (32, 32)
    decoder_params = sum(p.numel() for p in tok.pixel_decoder.parameters())
    assert 45e6 < decoder_params < 55e6  # DESIGN.md §1.4: decoder copy ≈ 50M


def test_geometry_errors_state_the_numbers() -> None:
    with pytest.raises(ValueError, match=r"patch_size=16 must equal the VAE's total down-sampling factor 8"):
        VisionTokenizer(VisionTokenizerConfig(encoder=VisionEncoderConfig(patch_size=16)))
    with pytest.raises(ValueError, match=r"grid \(8, 8\).*compression=3"):
        VisionTokenizer(VisionTokenizerConfig(compression=3))
    with pytest.raises(ValueError, match="encoder_input='ids'"):
        VisionTokenizerConfig(encoder_input="ids")
    # a VAE with ×8 conv down-sampling (total 16) aligns with patch 16
    cfg = VisionTokenizerConfig(
        vae=VAEConfig(block_out_channels=[16, 16, 16, 16], norm_num_groups=4),
        encoder=VisionEncoderConfig(patch_size=16),
        compression=4,
    )
    assert VisionTokenizer(cfg).num_image_tokens == 1


def test_images_shape_error() -> None:
    tok = VisionTokenizer(VisionTokenizerConfig())
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        tok.encode(torch.zeros(2, 3, 32, 32))


@pytest.mark.parametrize("encoder_input", ["pixels", "latents"])
def test_gradients_reach_trainables_not_the_frozen_vae(encoder_input: str) -> None:
    tok = VisionTokenizer(VisionTokenizerConfig(encoder_input=encoder_input)).train()
    assert not tok.vae.training and tok.encoder.training  # train() keeps the VAE in eval mode
    x1 = tok.encode(_images())
    llm_tokens, detail = tok(0.7 * x1 + 0.3 * torch.randn_like(x1))
    (llm_tokens.square().mean() + detail.square().mean()).backward()
    assert not x1.requires_grad
    bypassed = {id(p) for p in tok.encoder.patch_embed_parameters()} if encoder_input == "latents" else set()
    for name, p in tok.named_parameters():
        if name.startswith("vae.") or id(p) in bypassed:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_pixel_decoder_starts_as_the_vae_decoder_and_detail_is_patch_embed() -> None:
    tok = VisionTokenizer(VisionTokenizerConfig()).eval()
    with torch.no_grad():
        x1 = tok.encode(_images())
        out = tok.features(x1)
        assert torch.allclose(out.decoded, tok.vae.decode(x1), atol=1e-5)
        assert torch.allclose(out.detail, tok.encoder.patch_embed(out.decoded), atol=1e-6)
        assert torch.allclose(out.semantic, tok.encoder(out.decoded), atol=1e-6)
        tokens, detail = tok(x1)
        given = tok.features(x1, decoded=out.decoded)  # a given D(z_t) is used instead of decoding again
    assert torch.equal(detail, out.detail) and torch.allclose(tokens, tok.compress(out.semantic), atol=1e-6)
    assert torch.equal(given.semantic, out.semantic)


def test_reset_pixel_decoder_copies_the_vae_decoder_again() -> None:
    tok = VisionTokenizer(VisionTokenizerConfig()).eval()
    raw = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        for p in tok.pixel_decoder.parameters():
            p.add_(0.1)
        assert not torch.allclose(tok.pixel_decoder(raw), tok.vae.decode_raw(raw), atol=1e-3)
        tok.reset_pixel_decoder()
        assert torch.equal(tok.pixel_decoder(raw), tok.vae.decode_raw(raw))
    with pytest.raises(ValueError, match="encoder_input='pixels'"):
        VisionTokenizer(VisionTokenizerConfig(encoder_input="latents")).reset_pixel_decoder()


def test_deterministic_under_seed() -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(11)
        tok = VisionTokenizer(VisionTokenizerConfig()).eval()
        with torch.no_grad():
            outs.append(tok(tok.encode(_images()))[0])
    assert torch.equal(outs[0], outs[1])


def test_own_decoder_statistics_denormalise_what_d_decodes() -> None:
    """decoder_statistics="own" (the released layout): D carries a copy of the latent BatchNorm and uses it."""
    own = VisionTokenizer(VisionTokenizerConfig(decoder_statistics="own", compressor_norm_eps=1e-5)).eval()
    shared = VisionTokenizer(VisionTokenizerConfig()).eval()
    assert (
        "pixel_decoder.bn.running_var" in own.state_dict() and "pixel_decoder.bn.running_var" not in shared.state_dict()
    )
    assert own.compressor.norm.eps == 1e-5 and shared.compressor.norm.eps == 1e-6
    z = torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        before, vae_before = own.decode_pixels(z), own.vae.decode(z)
        own.pixel_decoder.bn.running_mean.add_(1.0)
        assert not torch.allclose(own.decode_pixels(z), before, atol=1e-3)
        assert torch.equal(own.vae.decode(z), vae_before)
        own.reset_pixel_decoder()  # copies the VAE's statistics again
        torch.testing.assert_close(own.decode_pixels(z), before)
