"""FLUX.2-style KL autoencoder with 2×2 patchified, BatchNorm-normalised latents (Cheers §1.1 step 1).

The network is `diffusers.AutoencoderKLFlux2`. That class already owns the normaliser: a
`BatchNorm2d(4·C, affine=False)` named `bn` whose running statistics normalise the *patchified* latent. It does not
patchify itself (the FLUX.2 pipeline does), so the 2×2 patchify lives here, with the pipeline's channel order
(c, dy, dx), which is exactly `F.pixel_unshuffle`'s order; pretrained `bn` statistics therefore line up.
We use `bn`'s buffers directly and never call its `forward`, so `train()` mode cannot drift the statistics;
`refresh_statistics` recomputes them exactly from data.

Images are in [-1, 1] everywhere in this package. `pixel_range` says what the autoencoder itself sees: "signed"
([-1, 1], FLUX.2's convention) or "unit" ([0, 1], what the released Cheers code feeds its VAE); `encode` and `decode`
convert at the boundary, so callers never see the difference.

Shape legend: B batch, C raw latent channels, H/W pixel height/width, h/w raw latent grid, P = 4·C patchified
channels on the (h/2)·(w/2) grid.

References:
    Cheers, arXiv 2603.12793, §3.1 (unified vision tokenizer).
    diffusers `AutoencoderKLFlux2` and `Flux2Pipeline._patchify_latents` (channel order, bn normalisation).
"""

import copy
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLFlux2
from torch import nn

PIXEL_RANGES = ("signed", "unit")


@dataclass
class VAEConfig:
    """Configuration of `VAE`. Defaults are the tiny preset; full-size (FLUX.2) values are in `full_vae_config`."""

    pretrained: str | None = None  # local dir or hub name loaded with `AutoencoderKLFlux2.from_pretrained`
    subfolder: str | None = None  # e.g. "vae" inside a FLUX.2 pipeline repo
    in_channels: int = 3
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # full: [128, 256, 512, 512]
    layers_per_block: int = 1  # full: 2
    latent_channels: int = 8  # full: 32
    norm_num_groups: int = 8  # full: 32
    mid_block_add_attention: bool = True
    batch_norm_eps: float = 1e-4  # FLUX.2: 1e-4
    patch_size: int = 2  # 2×2 patchify of the raw latent (FLUX.2: 2)
    pixel_range: str = "signed"  # what the autoencoder sees: "signed" [-1, 1] | "unit" [0, 1] (released Cheers)

    def __post_init__(self) -> None:
        if len(self.block_out_channels) < 1:
            raise ValueError(f"block_out_channels must be non-empty, got {self.block_out_channels}")
        for name in ("in_channels", "layers_per_block", "latent_channels", "norm_num_groups", "patch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry, got {bad}"
            )
        if self.batch_norm_eps <= 0:
            raise ValueError(f"batch_norm_eps must be > 0, got {self.batch_norm_eps}")
        if self.pixel_range not in PIXEL_RANGES:
            raise ValueError(f"vae.pixel_range must be one of {PIXEL_RANGES}, got {self.pixel_range!r}")


def full_vae_config(pretrained: str | None = None, subfolder: str | None = "vae") -> VAEConfig:
    """The FLUX.2 VAE geometry: ×8 conv down-sampling, 32 latent channels → 128 at H/16 after patchify.

    Args:
        pretrained: Local dir or hub name (e.g. "black-forest-labs/FLUX.2-dev"); None builds random weights.
        subfolder: Subfolder of the VAE inside `pretrained`.
    """
    return VAEConfig(
        pretrained=pretrained,
        subfolder=subfolder,
        block_out_channels=[128, 256, 512, 512],
        layers_per_block=2,
        latent_channels=32,
        norm_num_groups=32,
    )


def _autoencoder_kwargs(cfg: VAEConfig) -> dict:
    n = len(cfg.block_out_channels)
    return dict(
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        mid_block_add_attention=cfg.mid_block_add_attention,
        batch_norm_eps=cfg.batch_norm_eps,
        patch_size=(cfg.patch_size, cfg.patch_size),
    )


def _as_tuple(value: object) -> object:
    return tuple(value) if isinstance(value, list | tuple) else value


class PixelDecoder(nn.Module):
    """Decoder path of the VAE (post-quant conv + conv decoder): raw latent B,C,h,w → pixels B,3,H,W.

    `bn`, when given, is the decoder's own copy of the latent normaliser (the released checkpoint stores one);
    otherwise the VAE's statistics denormalise its input.
    """

    def __init__(self, post_quant_conv: nn.Module | None, decoder: nn.Module, bn: nn.BatchNorm2d | None = None) -> None:
        super().__init__()
        self.post_quant_conv = post_quant_conv if post_quant_conv is not None else nn.Identity()
        self.decoder = decoder
        self.bn = bn

    def forward(self, raw_BChw: torch.Tensor) -> torch.Tensor:
        """Decode a raw (unnormalised, unpatchified) latent. Returns pixels B,3,H,W."""
        return self.decoder(self.post_quant_conv(raw_BChw))


class VAE(nn.Module):
    """KL autoencoder mapping images in [-1, 1] to normalised, patchified latents z (and back)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.pretrained is None:
            self.autoencoder = AutoencoderKLFlux2(**_autoencoder_kwargs(cfg))
        else:
            kwargs = {"subfolder": cfg.subfolder} if cfg.subfolder else {}
            self.autoencoder = AutoencoderKLFlux2.from_pretrained(cfg.pretrained, **kwargs)
            self._check_loaded_config()
        loaded_patch = tuple(self.autoencoder.config.patch_size)
        if loaded_patch != (cfg.patch_size, cfg.patch_size):
            raise ValueError(f"patch_size={cfg.patch_size} disagrees with the checkpoint's patch_size={loaded_patch}")

    def _check_loaded_config(self) -> None:
        loaded = self.autoencoder.config
        wanted = _autoencoder_kwargs(self.cfg)
        ignored = {}
        for k, v in wanted.items():
            got = loaded.get(k)
            if k != "patch_size" and got is not None and _as_tuple(v) != _as_tuple(got):
                ignored[k] = (v, got)
        if ignored:
            warnings.warn(
                f"VAE architecture fields are taken from the checkpoint {self.cfg.pretrained!r}; "
                f"config values ignored (config, checkpoint): {ignored}",
                stacklevel=2,
            )

    @property
    def latent_channels(self) -> int:
        """Raw latent channels C (before patchify)."""
        return int(self.autoencoder.config.latent_channels)

    @property
    def latent_dim(self) -> int:
        """Channels of the normalised latent z: patch_size² · C."""
        return self.cfg.patch_size**2 * self.latent_channels

    @property
    def downsample_factor(self) -> int:
        """Total spatial down-sampling image → z, including patchify (tiny 8, FLUX.2 16)."""
        conv_down = 2 ** (len(self.autoencoder.config.block_out_channels) - 1)
        return conv_down * self.cfg.patch_size

    def _stats(self, ref: torch.Tensor, bn: nn.BatchNorm2d | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.autoencoder.bn if bn is None else bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(ref.device, ref.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps).to(ref.device, ref.dtype)
        return mean, std

    def patchify(self, raw_BChw: torch.Tensor) -> torch.Tensor:
        """Raw latent B,C,h,w → B,P,h/p,w/p with channel order (c, dy, dx) as in the FLUX.2 pipeline."""
        return F.pixel_unshuffle(raw_BChw, self.cfg.patch_size)

    def unpatchify(self, x_BPhw: torch.Tensor) -> torch.Tensor:
        """Exact inverse of `patchify`."""
        return F.pixel_shuffle(x_BPhw, self.cfg.patch_size)

    def from_raw(self, raw_BChw: torch.Tensor) -> torch.Tensor:
        """Raw latent → normalised z (patchify, then subtract running mean and divide by sqrt(var + eps))."""
        x = self.patchify(raw_BChw)
        mean, std = self._stats(x)
        return (x - mean) / std

    def to_raw(self, z_BPhw: torch.Tensor, bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
        """Normalised z → raw latent (denormalise, then unpatchify); exact inverse of `from_raw`.

        `bn`: other statistics to denormalise with (the pixel decoder's own copy); default the VAE's.
        """
        mean, std = self._stats(z_BPhw, bn)
        return self.unpatchify(z_BPhw * std + mean)

    def encode_raw(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → raw latent mean B,C,H/f,W/f (no sampling), the diffusers path."""
        x = images_B3HW if self.cfg.pixel_range == "signed" else (images_B3HW + 1) / 2
        return self.autoencoder.encode(x).latent_dist.mode()

    def decode_raw(self, raw_BChw: torch.Tensor) -> torch.Tensor:
        """Raw latent → images B,3,H,W in [-1, 1] (not clamped), the diffusers path."""
        x = self.autoencoder.decode(raw_BChw).sample
        return x if self.cfg.pixel_range == "signed" else x * 2 - 1

    def encode(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → normalised z B,P,H/d,W/d with d = `downsample_factor`."""
        return self.from_raw(self.encode_raw(images_B3HW))

    def decode(self, z_BPhw: torch.Tensor) -> torch.Tensor:
        """Normalised z → images B,3,H,W."""
        return self.decode_raw(self.to_raw(z_BPhw))

    @torch.no_grad()
    def latent_moments(self, data: torch.Tensor | Iterable[torch.Tensor], source: str = "images") -> torch.Tensor:
        """Per-channel float64 moments of the patchified latent: rows (count, Σx, Σx²), shape 3,P.

        Moments add across batches and processes (one `all_reduce` of this tensor under DDP) before
        `set_statistics`.

        Args:
            data: One tensor or an iterable of batches.
            source: "images" (B,3,H,W in [-1, 1], encoded first) or "latents" (raw latents from `encode_raw`).
        """
        if source not in ("images", "latents"):
            raise ValueError(f"source must be 'images' or 'latents', got {source!r}")
        batches = [data] if isinstance(data, torch.Tensor) else data
        moments = None
        for batch in batches:
            raw = self.encode_raw(batch) if source == "images" else batch
            x = self.patchify(raw).double()
            count = torch.full_like(x[0, :, 0, 0], x.shape[0] * x.shape[2] * x.shape[3])
            m = torch.stack([count, x.sum(dim=(0, 2, 3)), x.square().sum(dim=(0, 2, 3))])
            moments = m if moments is None else moments + m
        if moments is None:
            raise ValueError("latent_moments got no data")
        return moments

    @torch.no_grad()
    def set_statistics(self, moments_3P: torch.Tensor) -> None:
        """Store the population mean/var given by `latent_moments` in the normaliser."""
        if moments_3P.shape != (3, self.latent_dim) or not (moments_3P[0] > 0).all():
            raise ValueError(f"moments must be 3,{self.latent_dim} with positive counts, got {tuple(moments_3P.shape)}")
        count, total, total_sq = moments_3P.double()
        mean = total / count
        var = (total_sq / count - mean.square()).clamp_min(0.0)
        bn = self.autoencoder.bn
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.to(bn.running_var.dtype))
        bn.num_batches_tracked.fill_(1)

    def refresh_statistics(self, data: torch.Tensor | Iterable[torch.Tensor], source: str = "images") -> None:
        """Recompute the normaliser's running mean/var exactly (population statistics) from data (one process)."""
        self.set_statistics(self.latent_moments(data, source))

    def make_pixel_decoder(self, own_statistics: bool = False) -> PixelDecoder:
        """A trainable deep copy of the decoder path (post-quant conv + decoder): raw latent → pixels.

        `own_statistics`: the copy also gets its own copy of the latent normaliser `bn` (a buffer, never trained).
        """
        ae = self.autoencoder
        bn = copy.deepcopy(ae.bn) if own_statistics else None
        decoder = PixelDecoder(copy.deepcopy(ae.post_quant_conv), copy.deepcopy(ae.decoder), bn)
        return decoder.requires_grad_(True).train(self.training)
