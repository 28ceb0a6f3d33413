"""Tests for cheers_pl.model.vae: geometry, exact inverses, normaliser statistics, pixel decoder, loading."""

import pytest
import torch

from cheers_pl.model.vae import VAE, VAEConfig, full_vae_config


@pytest.fixture(scope="module")
def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(VAEConfig()).eval()


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 64, 64, generator=g) * 2 - 1


def test_tiny_geometry(vae: VAE) -> None:
    assert vae.latent_dim == 32 and vae.downsample_factor == 8 and vae.latent_channels == 8
    with torch.no_grad():
        raw = vae.encode_raw(_images())
        z = vae.encode(_images())
        x = vae.decode(z)
    assert raw.shape == (2, 8, 16, 16)
    assert z.shape == (2, 32, 8, 8)
    assert x.shape == (2, 3, 64, 64)


def test_full_size_on_meta_device() -> None:
    with torch.device("meta"):
        vae = VAE(full_vae_config())
        z = vae.encode(torch.zeros(1, 3, 512, 512))
        x = vae.decode(z)
    assert z.shape == (1, 128, 32, 32) and x.shape == (1, 3, 512, 512)
    assert vae.latent_dim == 128 and vae.downsample_factor == 16
    num_params = sum(p.numel() for p in vae.parameters())
    assert 80e6 < num_params < 88e6  # DESIGN.md §1.4: VAE encoder+decoder ≈ 84M


def test_patchify_matches_flux2_pipeline_order(vae: VAE) -> None:
    raw = torch.randn(2, 8, 6, 4)
    # Flux2Pipeline._patchify_latents, written out: channel order (c, dy, dx).
    ref = raw.view(2, 8, 3, 2, 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(2, 32, 3, 2)
    assert torch.equal(vae.patchify(raw), ref)
    assert torch.equal(vae.unpatchify(vae.patchify(raw)), raw)


def test_normalise_round_trips() -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig())
    vae.autoencoder.bn.running_mean.normal_()
    vae.autoencoder.bn.running_var.uniform_(0.5, 2.0)
    raw = torch.randn(2, 8, 16, 16)
    z = torch.randn(2, 32, 8, 8)
    assert torch.allclose(vae.to_raw(vae.from_raw(raw)), raw, atol=1e-5)
    assert torch.allclose(vae.from_raw(vae.to_raw(z)), z, atol=1e-5)
    # the stored statistics really are applied
    assert not torch.allclose(vae.from_raw(raw), vae.patchify(raw), atol=1e-2)


def test_refresh_statistics_standardises_its_data() -> None:
    torch.manual_seed(0)
    vae = VAE(VAEConfig(batch_norm_eps=1e-12)).eval()
    images = _images(4)
    vae.refresh_statistics([images[:2], images[2:]])
    z = vae.encode(images).detach()
    assert torch.allclose(z.mean(dim=(0, 2, 3)), torch.zeros(32), atol=1e-4)
    assert torch.allclose(z.var(dim=(0, 2, 3), unbiased=False), torch.ones(32), atol=1e-3)
    mean_batched = vae.autoencoder.bn.running_mean.clone()
    vae.refresh_statistics(vae.encode_raw(images), source="latents")
    assert torch.allclose(vae.autoencoder.bn.running_mean, mean_batched, atol=1e-6)
    with pytest.raises(ValueError, match="source"):
        vae.refresh_statistics(images, source="pixels")
    # moments of two shards add up to the moments of the whole (what an all_reduce across processes does)
    raw = torch.randn(4, 8, 16, 16)
    parts = vae.latent_moments(raw[:1], source="latents") + vae.latent_moments(raw[1:], source="latents")
    assert torch.allclose(parts, vae.latent_moments(raw, source="latents"), rtol=1e-12)
    with pytest.raises(ValueError, match="moments must be 3,32"):
        vae.set_statistics(torch.ones(3, 8))


def test_train_mode_uses_stored_statistics(vae: VAE) -> None:
    before = vae.autoencoder.bn.running_mean.clone()
    images = _images(3)
    with torch.no_grad():
        z_eval = vae.encode(images)
        vae.train()
        z_train_one = vae.encode(images[:1])
        vae.eval()
    assert torch.allclose(z_train_one, z_eval[:1], atol=1e-5)  # no batch statistics in train mode
    assert torch.equal(vae.autoencoder.bn.running_mean, before)


def test_pixel_decoder_is_a_trainable_copy(vae: VAE) -> None:
    decoder = vae.make_pixel_decoder()
    raw = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(decoder(raw), vae.decode_raw(raw), atol=1e-6)
    vae_ids = {id(p) for p in vae.parameters()}
    assert all(p.requires_grad and id(p) not in vae_ids for p in decoder.parameters())
    decoder(raw).square().mean().backward()
    assert all(p.grad is not None for p in decoder.parameters())


def test_deterministic_under_seed() -> None:
    torch.manual_seed(3)
    a = VAE(VAEConfig())
    torch.manual_seed(3)
    b = VAE(VAEConfig())
    with torch.no_grad():
        assert torch.equal(a.encode(_images()), b.encode(_images()))


def test_pretrained_round_trip(vae: VAE, tmp_path) -> None:
    vae.refresh_statistics(_images(2, seed=5))
    vae.autoencoder.save_pretrained(tmp_path / "vae")
    loaded = VAE(VAEConfig(pretrained=str(tmp_path), subfolder="vae")).eval()
    images = _images()
    with torch.no_grad():
        assert torch.equal(loaded.encode(images), vae.encode(images))
        z = vae.encode(images)
        assert torch.equal(loaded.decode(z), vae.decode(z))


def test_pretrained_warns_about_ignored_fields(vae: VAE, tmp_path) -> None:
    vae.autoencoder.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="latent_channels"):
        VAE(VAEConfig(pretrained=str(tmp_path), latent_channels=4))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"norm_num_groups=7.*\[32, 64, 64\]"):
        VAEConfig(norm_num_groups=7)
    with pytest.raises(ValueError, match="patch_size must be >= 1, got 0"):
        VAEConfig(patch_size=0)


def test_unit_pixel_range_feeds_the_autoencoder_zero_one_pixels(vae: VAE) -> None:
    """pixel_range="unit" (the released code) shows the autoencoder (x + 1)/2 and maps its output back to [-1, 1]."""
    unit = VAE(VAEConfig(pixel_range="unit")).eval()
    unit.load_state_dict(vae.state_dict())
    x, raw = _images(), torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(unit.encode_raw(x), vae.encode_raw((x + 1) / 2))
        torch.testing.assert_close(unit.decode_raw(raw), vae.decode_raw(raw) * 2 - 1)
        assert not torch.allclose(unit.encode(x), vae.encode(x), atol=1e-3)
    with pytest.raises(ValueError, match="pixel_range"):
        VAEConfig(pixel_range="0-255")
