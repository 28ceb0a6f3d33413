"""Semantic encoder: the SigLIP2 vision tower behind one interface, two backends (Cheers §1.1 step 4).

`forward(pixels)` is the last hidden state after the post-LayerNorm (no pooling head). It factors as
`forward_embeddings(patch_embed(pixels))`, where `patch_embed` is S(·) = conv patch embedding + position embedding,
which the flow head reuses as the "detail residual" of high-frequency injection.

Backends are chosen by name from `VISION_ENCODERS` (STYLE.md R6):
- "hf_siglip": `transformers.SiglipVisionModel`. The fixed-resolution SigLIP2 checkpoints
  (e.g. google/siglip2-so400m-patch16-512) use the plain Siglip architecture, so they load here directly.
- "timm_siglip": `timm` VisionTransformer (`vit_so400m_patch16_siglip_512` by default) with the attention-pool head
  removed; pretrained weights from a local state-dict file (.safetensors / .pt / .bin) or a timm hub id.

Shape legend: `cheers_pl.model` (M tokens = (H/p)·(W/p) of width C).

References:
    Cheers, arXiv 2603.12793, §3.1. SigLIP 2, arXiv 2502.14786.
"""

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel


@dataclass
class VisionEncoderConfig:
    """Configuration of the semantic encoder. Defaults are the tiny preset; full values in the comments."""

    backend: str = "hf_siglip"  # a key of VISION_ENCODERS
    pretrained: str | None = None  # hf: local dir or hub name; timm: state-dict file or timm hub id
    image_size: int = 64  # full: 512
    patch_size: int = 8  # full: 16
    dim: int = 128  # full: 1152
    num_layers: int = 3  # full: 27
    num_heads: int = 4  # full: 16
    mlp_dim: int = 512  # full: 4304
    in_channels: int = 3
    timm_model: str = "vit_so400m_patch16_siglip_512"  # timm architecture name (timm backend only)
    # None: global attention (SigLIP2). k: each token attends only to tokens within k patches (Chebyshev) in every
    # layer (hf_siglip only), so that a token describes its neighbourhood, not the whole scene (issue 12)
    attention_window: int | None = None

    def __post_init__(self) -> None:
        if self.backend not in VISION_ENCODERS:
            raise ValueError(f"backend={self.backend!r} is not one of {sorted(VISION_ENCODERS)}")
        for name in ("image_size", "patch_size", "dim", "num_layers", "num_heads", "mlp_dim", "in_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be divisible by patch_size={self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.attention_window is not None and (self.attention_window < 0 or self.backend != "hf_siglip"):
            raise ValueError(f"attention_window={self.attention_window} needs backend 'hf_siglip' and a value >= 0")


def full_vision_encoder_config(backend: str = "hf_siglip", pretrained: str | None = None) -> VisionEncoderConfig:
    """SigLIP2 so400m, patch 16, 512 px (1024 tokens of width 1152)."""
    return VisionEncoderConfig(
        backend=backend,
        pretrained=pretrained,
        image_size=512,
        patch_size=16,
        dim=1152,
        num_layers=27,
        num_heads=16,
        mlp_dim=4304,
    )


class VisionEncoder(nn.Module, ABC):
    """Common interface: `patch_embed` (S), `forward_embeddings` (transformer + post-LN), `forward`."""

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dim = cfg.dim
        self.patch_size = cfg.patch_size
        self.image_size = cfg.image_size
        self.in_channels = cfg.in_channels

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (rows, cols) = image_size / patch_size per side."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def num_tokens(self) -> int:
        """Tokens per image M."""
        return self.grid_size[0] * self.grid_size[1]

    def patch_embed(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        """S(·): conv patch embedding + position embedding. Returns B,M,C."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if pixels_B3HW.ndim != 4 or tuple(pixels_B3HW.shape[1:]) != expected:
            raise ValueError(f"pixels must have shape (B, *{expected}), got {tuple(pixels_B3HW.shape)}")
        return self._patch_embed(pixels_B3HW)

    @abstractmethod
    def _patch_embed(self, pixels_B3HW: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def patch_embed_parameters(self) -> list[nn.Parameter]:
        """Parameters of S(·) (patch conv + position embedding), e.g. to freeze them when S is bypassed."""

    @abstractmethod
    def forward_embeddings(self, emb_BMC: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + post-LayerNorm on given embeddings. Returns B,M,C."""

    def forward(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        """Last hidden state after the post-LayerNorm. Returns B,M,C."""
        return self.forward_embeddings(self.patch_embed(pixels_B3HW))


def _warn_ignored(cfg: VisionEncoderConfig, loaded: dict[str, int]) -> None:
    ignored = {k: (getattr(cfg, k), v) for k, v in loaded.items() if getattr(cfg, k) != v}
    if ignored:
        warnings.warn(
            f"vision encoder architecture fields are taken from {cfg.pretrained!r}; "
            f"config values ignored (config, checkpoint): {ignored}",
            stacklevel=3,
        )


class HFSiglipEncoder(VisionEncoder):
    """SigLIP(2) vision tower from `transformers` (`SiglipVisionModel`, pooling head disabled)."""

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__(cfg)
        if cfg.pretrained is None:
            config = SiglipVisionConfig(
                hidden_size=cfg.dim,
                intermediate_size=cfg.mlp_dim,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                num_channels=cfg.in_channels,
                image_size=cfg.image_size,
                patch_size=cfg.patch_size,
                vision_use_head=False,
            )
            self.model = SiglipVisionModel(config)
        else:
            self.model = SiglipVisionModel.from_pretrained(cfg.pretrained, vision_use_head=False)
            c = self.model.config
            loaded = dict(
                image_size=c.image_size,
                patch_size=c.patch_size,
                dim=c.hidden_size,
                num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads,
                mlp_dim=c.intermediate_size,
                in_channels=c.num_channels,
            )
            _warn_ignored(cfg, loaded)
            self.dim, self.patch_size, self.image_size = c.hidden_size, c.patch_size, c.image_size
            self.in_channels = c.num_channels

    def _patch_embed(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(pixels_B3HW)

    def patch_embed_parameters(self) -> list[nn.Parameter]:
        """Parameters of S(·): the patch conv and the position embedding table."""
        return list(self.model.embeddings.parameters())

    def window_mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """Additive 1×1×M×M mask of `attention_window` (0 inside the window, the dtype's minimum outside), or None."""
        if self.cfg.attention_window is None:
            return None
        side = self.image_size // self.patch_size
        yy, xx = torch.meshgrid(torch.arange(side, device=device), torch.arange(side, device=device), indexing="ij")
        y, x = yy.flatten(), xx.flatten()
        far_MM = torch.maximum((y[:, None] - y[None]).abs(), (x[:, None] - x[None]).abs()) > self.cfg.attention_window
        mask_MM = torch.zeros(far_MM.shape, dtype=dtype, device=device).masked_fill(far_MM, torch.finfo(dtype).min)
        return mask_MM[None, None]

    def forward_embeddings(self, emb_BMC: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + post-LayerNorm on given embeddings. Returns B,M,C."""
        mask = self.window_mask(emb_BMC.dtype, emb_BMC.device)
        hidden_BMC = self.model.encoder(inputs_embeds=emb_BMC, attention_mask=mask).last_hidden_state
        return self.model.post_layernorm(hidden_BMC)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class TimmSiglipEncoder(VisionEncoder):
    """SigLIP(2) vision tower from `timm`, built with `num_classes=0, global_pool=''` (no attention-pool head)."""

    _HEAD_PREFIXES = ("attn_pool.", "head.", "fc_norm.")

    def __init__(self, cfg: VisionEncoderConfig) -> None:
        super().__init__(cfg)
        is_file = cfg.pretrained is not None and Path(cfg.pretrained).is_file()
        hub_kwargs = {}
        if cfg.pretrained is not None and not is_file:
            # a timm hub id: the classifier/pool weights it carries are not needed, hence non-strict loading
            hub_kwargs = dict(pretrained_cfg_overlay=dict(hf_hub_id=cfg.pretrained), pretrained_strict=False)
        self.model = timm.create_model(
            cfg.timm_model,
            pretrained=bool(hub_kwargs),
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.dim,
            depth=cfg.num_layers,
            num_heads=cfg.num_heads,
            mlp_ratio=(cfg.mlp_dim + 0.5) / cfg.dim,  # timm takes int(dim·ratio); +0.5 makes that exactly mlp_dim
            in_chans=cfg.in_channels,
            num_classes=0,
            global_pool="",
            **hub_kwargs,
        )
        if is_file:
            state = _load_state_dict(Path(cfg.pretrained))
            state = {k: v for k, v in state.items() if not k.startswith(self._HEAD_PREFIXES)}
            try:
                self.model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                msg = f"pretrained={cfg.pretrained!r} does not match the configured architecture: {err}"
                raise ValueError(msg) from err
        assert self.model.blocks[0].mlp.fc1.out_features == cfg.mlp_dim

    def _patch_embed(self, pixels_B3HW: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(pixels_B3HW))))

    def patch_embed_parameters(self) -> list[nn.Parameter]:
        """Parameters of S(·): the patch conv and `pos_embed` (no class token in SigLIP)."""
        m = self.model
        extra = [t for t in (m.pos_embed, m.cls_token, m.reg_token) if t is not None]
        return [*m.patch_embed.parameters(), *extra, *m.norm_pre.parameters()]

    def forward_embeddings(self, emb_BMC: torch.Tensor) -> torch.Tensor:
        """Transformer blocks + final LayerNorm on given embeddings. Returns B,M,C."""
        return self.model.norm(self.model.blocks(emb_BMC))


VISION_ENCODERS: dict[str, type[VisionEncoder]] = {
    "hf_siglip": HFSiglipEncoder,
    "timm_siglip": TimmSiglipEncoder,
}


def build_vision_encoder(cfg: VisionEncoderConfig) -> VisionEncoder:
    """Instantiate the backend named by `cfg.backend`."""
    return VISION_ENCODERS[cfg.backend](cfg)
