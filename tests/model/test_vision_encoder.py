"""Tests for cheers_pl.model.vision_encoder: both backends, library parity, full-size geometry, loading."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import SiglipConfig, SiglipModel, SiglipTextConfig

from cheers_pl.model.vision_encoder import (
    VISION_ENCODERS,
    HFSiglipEncoder,
    TimmSiglipEncoder,
    VisionEncoderConfig,
    build_vision_encoder,
    full_vision_encoder_config,
)

BACKENDS = sorted(VISION_ENCODERS)


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def _library_output(encoder, pixels: torch.Tensor) -> torch.Tensor:
    if isinstance(encoder, HFSiglipEncoder):
        return encoder.model(pixels).last_hidden_state
    assert isinstance(encoder, TimmSiglipEncoder)
    return encoder.model.forward_features(pixels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_shapes_and_library_parity(backend: str) -> None:
    encoder = build_vision_encoder(VisionEncoderConfig(backend=backend)).eval()
    assert (encoder.dim, encoder.patch_size, encoder.grid_size, encoder.num_tokens) == (128, 8, (8, 8), 64)
    pixels = _pixels()
    with torch.no_grad():
        out = encoder(pixels)
        emb = encoder.patch_embed(pixels)
        assert emb.shape == out.shape == (2, 64, 128)
        assert torch.equal(out, encoder.forward_embeddings(emb))
        assert torch.allclose(out, _library_output(encoder, pixels), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_embed_parameters_are_exactly_those_of_s(backend: str) -> None:
    encoder = build_vision_encoder(VisionEncoderConfig(backend=backend))
    encoder.patch_embed(_pixels()).sum().backward()
    with_grad = {id(p) for p in encoder.parameters() if p.grad is not None}
    assert with_grad == {id(p) for p in encoder.patch_embed_parameters()}
    assert len(with_grad) == 3  # conv weight, conv bias, position embedding


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_every_parameter(backend: str) -> None:
    encoder = build_vision_encoder(VisionEncoderConfig(backend=backend))
    encoder(_pixels()).square().mean().backward()
    missing = [n for n, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic_under_seed(backend: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        encoder = build_vision_encoder(VisionEncoderConfig(backend=backend)).eval()
        with torch.no_grad():
            outs.append(encoder(_pixels()))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_full_size_on_meta_device(backend: str) -> None:
    with torch.device("meta"):
        encoder = build_vision_encoder(full_vision_encoder_config(backend))
        out = encoder(torch.zeros(1, 3, 512, 512))
    assert out.shape == (1, 1024, 1152) and encoder.grid_size == (32, 32)
    num_params = sum(p.numel() for p in encoder.parameters())
    assert 0.40e9 < num_params < 0.43e9  # SigLIP2 so400m without its pooling head (≈0.43B with it)


def test_hf_pretrained_round_trip(tmp_path) -> None:
    encoder = build_vision_encoder(VisionEncoderConfig()).eval()
    encoder.model.save_pretrained(tmp_path)
    loaded = build_vision_encoder(VisionEncoderConfig(pretrained=str(tmp_path))).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_pixels()), encoder(_pixels()))


def test_hf_loads_vision_tower_of_full_siglip_checkpoint(tmp_path) -> None:
    """SigLIP2 fixed-resolution checkpoints are full SiglipModels (vision + text); the tower must load from them."""
    vision = dict(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8
    )
    text = SiglipTextConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        vocab_size=50,
        max_position_embeddings=16,
    )
    full = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision)).eval()
    full.save_pretrained(tmp_path)
    loaded = build_vision_encoder(VisionEncoderConfig(pretrained=str(tmp_path))).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(_pixels()), full.vision_model(_pixels()).last_hidden_state, atol=1e-6)


def test_hf_pretrained_warns_about_ignored_fields(tmp_path) -> None:
    build_vision_encoder(VisionEncoderConfig()).model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="dim"):
        loaded = build_vision_encoder(VisionEncoderConfig(pretrained=str(tmp_path), dim=32, num_heads=1))
    assert loaded.dim == 128


@pytest.mark.parametrize("suffix", ["pt", "safetensors"])
def test_timm_pretrained_from_state_dict_file(tmp_path, suffix: str) -> None:
    # the reference keeps timm's default attention-pool head; its keys must be dropped on load
    reference = timm.create_model(
        "vit_so400m_patch16_siglip_512", img_size=64, patch_size=8, embed_dim=128, depth=3, num_heads=4, mlp_ratio=4.0
    ).eval()
    path = tmp_path / f"weights.{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    assert any(k.startswith("attn_pool.") for k in state)
    if suffix == "safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    loaded = build_vision_encoder(VisionEncoderConfig(backend="timm_siglip", pretrained=str(path))).eval()
    with torch.no_grad():
        assert torch.equal(loaded(_pixels()), reference.forward_features(_pixels()))


def test_timm_mismatched_file_raises(tmp_path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(build_vision_encoder(VisionEncoderConfig(backend="timm_siglip")).model.state_dict(), path)
    with pytest.raises(ValueError, match="weights.pt"):
        build_vision_encoder(VisionEncoderConfig(backend="timm_siglip", pretrained=str(path), dim=32))


def test_input_and_config_errors() -> None:
    encoder = build_vision_encoder(VisionEncoderConfig())
    with pytest.raises(ValueError, match=r"\(2, 3, 32, 32\)"):
        encoder(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match="backend='clip'"):
        VisionEncoderConfig(backend="clip")
    with pytest.raises(ValueError, match="image_size=60 must be divisible by patch_size=8"):
        VisionEncoderConfig(image_size=60)


@pytest.mark.parametrize("window", [None, 0, 1])
def test_attention_window_bounds_what_a_token_sees(window) -> None:
    """With `attention_window` k each of the L layers widens the view by k patches: a patch farther than k·L
    (Chebyshev) from a token leaves it exactly unchanged, a nearer one changes it; None is global attention."""
    cfg = VisionEncoderConfig(num_layers=3, attention_window=window)  # 8×8 patches of 8 px
    torch.manual_seed(0)
    encoder = build_vision_encoder(cfg).eval()
    pixels = _pixels(1)
    far, near = pixels.clone(), pixels.clone()
    far[..., 56:, 56:] += 1.0  # patch (7, 7): 7 patches from token (0, 0)
    near[..., 8:16, 8:16] += 1.0  # patch (1, 1): 1 patch away
    with torch.no_grad():
        base, moved_far, moved_near = (encoder(x)[0, 0] for x in (pixels, far, near))
    reach = None if window is None else window * cfg.num_layers
    assert torch.equal(base, moved_far) == (reach is not None and reach < 7)
    assert torch.equal(base, moved_near) == (reach == 0)


def test_attention_window_needs_the_hf_backend_and_a_non_negative_value() -> None:
    with pytest.raises(ValueError, match="attention_window"):
        VisionEncoderConfig(backend="timm_siglip", attention_window=1)
    with pytest.raises(ValueError, match="attention_window"):
        VisionEncoderConfig(attention_window=-1)
