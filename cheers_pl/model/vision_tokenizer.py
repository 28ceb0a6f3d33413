"""Unified vision tokenizer: frozen VAE → (noisy) latent → pixel decoder D → semantic encoder → token compressor.

Composition only (Cheers §1.1). `encode` maps images to the clean latent z1; the flow process
(`cheers_pl.objective.flow_matching`) noises it to the caller's t (t = 1 for understanding inputs, t ~ U(0, 1) or
logit-normal / shifted for generation targets); `forward(z_t)` turns any z_t into LLM tokens plus the detail
residual. With `encoder_input="latents"` the normalised latent goes straight into the encoder through a 1×1 conv
patch embedding (the paper's appendix ablation that drops OCR-grade detail), replacing D and the pixel patch
embedding.

Shape legend: `cheers_pl.model` (M semantic tokens of width C on the latent grid h×w, N = M / f² LLM tokens of
width D).

References:
    Cheers, arXiv 2603.12793, §3.1 and appendix (pixel decoding vs latents into the ViT).
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from cheers_pl.model.projectors import TokenCompressor, TokenCompressorConfig
from cheers_pl.model.vae import VAE, VAEConfig, full_vae_config
from cheers_pl.model.vision_encoder import VisionEncoderConfig, build_vision_encoder, full_vision_encoder_config

ENCODER_INPUTS = ("pixels", "latents")
DECODER_STATISTICS = ("shared", "own")


@dataclass
class VisionTokenizerConfig:
    """Configuration of `VisionTokenizer`. Defaults are the tiny preset."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    encoder: VisionEncoderConfig = field(default_factory=VisionEncoderConfig)
    compression: int = 2  # f: f×f token unshuffle (1 = none, 2 = paper's 4× fewer tokens, 4 = 16×)
    encoder_input: str = "pixels"  # "pixels" (D(z_t) → encoder, the paper) | "latents" (ablation)
    llm_dim: int = 128  # full: 1536
    compressor_norm_eps: float = 1e-6  # the compressor's LayerNorm (released checkpoint: 1e-5, PyTorch's default)
    # a fixed 2-D position table added to the LLM image tokens ("none" | "sincos2d"; `projectors.TokenCompressor`)
    token_positions: str = "none"
    # D denormalises z_t with the VAE's latent statistics ("shared") or with its own copy ("own", as the released
    # checkpoint, which stores a second BatchNorm for the decoder copy)
    decoder_statistics: str = "shared"

    def __post_init__(self) -> None:
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"encoder_input={self.encoder_input!r} is not one of {ENCODER_INPUTS}")
        if self.compression < 1:
            raise ValueError(f"compression must be >= 1, got {self.compression}")
        if self.llm_dim < 1:
            raise ValueError(f"llm_dim must be >= 1, got {self.llm_dim}")
        if self.compressor_norm_eps <= 0:
            raise ValueError(f"compressor_norm_eps must be > 0, got {self.compressor_norm_eps}")
        if self.decoder_statistics not in DECODER_STATISTICS:
            raise ValueError(f"decoder_statistics={self.decoder_statistics!r} is not one of {DECODER_STATISTICS}")


def full_vision_tokenizer_config(
    vae_pretrained: str | None = None, encoder_pretrained: str | None = None, backend: str = "hf_siglip"
) -> VisionTokenizerConfig:
    """The 1.5B preset: FLUX.2 VAE, SigLIP2 so400m/16 at 512 px, 4× compression into width 1536."""
    return VisionTokenizerConfig(
        vae=full_vae_config(vae_pretrained),
        encoder=full_vision_encoder_config(backend, encoder_pretrained),
        llm_dim=1536,
    )


@dataclass
class VisionFeatures:
    """The semantic path of one latent (shapes in the legend)."""

    semantic: torch.Tensor  # B,M,C encoder(D(z_t)): last hidden state after the post-LayerNorm
    detail: torch.Tensor  # B,M,C S(D(z_t)), the patch embedding (or the latent embedding)
    decoded: torch.Tensor | None  # B,3,H,W D(z_t); None for encoder_input="latents"


class LatentEmbed(nn.Module):
    """1×1 conv patch embedding of the normalised latent + learned position embedding (latents ablation)."""

    def __init__(self, latent_dim: int, dim: int, num_tokens: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(latent_dim, dim, kernel_size=1)
        self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, dim) * 0.02)

    def forward(self, z_BPhw: torch.Tensor) -> torch.Tensor:
        """Returns B,M,C with M = h·w in raster order."""
        return self.proj(z_BPhw).flatten(2).transpose(1, 2) + self.pos_embed


class VisionTokenizer(nn.Module):
    """Images → (noisy) latents → LLM image tokens + detail residual, with a frozen VAE."""

    def __init__(self, cfg: VisionTokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = VAE(cfg.vae).requires_grad_(False).eval()
        self.encoder = build_vision_encoder(cfg.encoder)
        down, patch = self.vae.downsample_factor, self.encoder.patch_size
        if patch != down:
            raise ValueError(
                f"encoder patch_size={patch} must equal the VAE's total down-sampling factor {down} "
                f"(conv ×{down // cfg.vae.patch_size} · patchify {cfg.vae.patch_size}) so tokens align with latents"
            )
        grid = self.encoder.grid_size
        if grid[0] % cfg.compression or grid[1] % cfg.compression:
            raise ValueError(
                f"encoder grid {grid} (image_size={self.encoder.image_size} / patch_size={patch}) "
                f"must be divisible by compression={cfg.compression}"
            )
        if self.encoder.in_channels != cfg.vae.in_channels:
            raise ValueError(
                f"encoder in_channels={self.encoder.in_channels} must equal vae in_channels={cfg.vae.in_channels}"
            )
        if cfg.encoder_input == "pixels":
            self.pixel_decoder = self.vae.make_pixel_decoder(own_statistics=cfg.decoder_statistics == "own")
            self.latent_embed = None
        else:
            self.pixel_decoder = None
            self.latent_embed = LatentEmbed(self.vae.latent_dim, self.encoder.dim, self.encoder.num_tokens)
            # the pixel patch embedding is bypassed: freeze it so no trainable parameter is left without gradient
            for p in self.encoder.patch_embed_parameters():
                p.requires_grad_(False)
        self.compressor = TokenCompressor(
            TokenCompressorConfig(
                in_dim=self.encoder.dim,
                out_dim=cfg.llm_dim,
                factor=cfg.compression,
                layer_norm_eps=cfg.compressor_norm_eps,
                position_embedding=cfg.token_positions,
            )
        )

    def train(self, mode: bool = True) -> "VisionTokenizer":
        """Set train/eval mode; the frozen VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def reset_pixel_decoder(self) -> None:
        """Re-initialise D from the current VAE decoder (e.g. after the VAE itself was trained or reloaded)."""
        if self.pixel_decoder is None:
            raise ValueError("reset_pixel_decoder needs encoder_input='pixels', got 'latents'")
        own = self.cfg.decoder_statistics == "own"
        self.pixel_decoder.load_state_dict(self.vae.make_pixel_decoder(own_statistics=own).state_dict())

    @property
    def semantic_grid_hw(self) -> tuple[int, int]:
        """Semantic token grid (= latent grid): image side / patch size."""
        return self.encoder.grid_size

    @property
    def grid_hw(self) -> tuple[int, int]:
        """Compressed (LLM) token grid: semantic grid / compression."""
        h, w = self.semantic_grid_hw
        return h // self.cfg.compression, w // self.cfg.compression

    @property
    def num_image_tokens(self) -> int:
        """LLM tokens per image: (H/p/f)·(W/p/f)."""
        return self.grid_hw[0] * self.grid_hw[1]

    @property
    def latent_dim(self) -> int:
        """Channels P of the normalised latent z (the flow head's output width)."""
        return self.vae.latent_dim

    @property
    def detail_dim(self) -> int:
        """Width of the detail residual S(D(z_t)) = semantic encoder width."""
        return self.encoder.dim

    def encode(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → clean normalised latent z1 B,P,h,w (no gradient through the frozen VAE)."""
        side = self.encoder.image_size
        expected = (self.cfg.vae.in_channels, side, side)
        if images_B3HW.ndim != 4 or tuple(images_B3HW.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, *{expected}), got {tuple(images_B3HW.shape)}")
        with torch.no_grad():
            return self.vae.encode(images_B3HW)

    def decode_pixels(self, z_t: torch.Tensor) -> torch.Tensor:
        """The pixel decoder D: normalised (noisy) latent → pixels B,3,H,W."""
        if self.pixel_decoder is None:
            raise ValueError("decode_pixels needs encoder_input='pixels', got 'latents'")
        return self.pixel_decoder(self.vae.to_raw(z_t, self.pixel_decoder.bn))

    def features(self, z_t: torch.Tensor, decoded: torch.Tensor | None = None) -> VisionFeatures:
        """The semantic path of z_t: D(z_t) → S → encoder (or the latent embedding for `encoder_input="latents"`).

        Args:
            z_t: B,P,h,w normalised latent at any t.
            decoded: D(z_t) when the caller has it already (e.g. detached, so a loss on the encoder does not train D).
        """
        if self.pixel_decoder is not None:
            decoded = self.decode_pixels(z_t) if decoded is None else decoded
            detail_BMC = self.encoder.patch_embed(decoded)
        else:
            decoded = None
            detail_BMC = self.latent_embed(z_t)
        return VisionFeatures(self.encoder.forward_embeddings(detail_BMC), detail_BMC, decoded)

    def compress(self, semantic_BMC: torch.Tensor) -> torch.Tensor:
        """Semantic tokens on the latent grid → LLM tokens B,N,D (LayerNorm → unshuffle → MLP)."""
        return self.compressor(semantic_BMC, self.semantic_grid_hw)

    def forward(self, z_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (noisy) latent → (LLM tokens B,N,D, detail residual S(D(z_t)) B,M,C)."""
        feats = self.features(z_t)
        return self.compress(feats.semantic), feats.detail
