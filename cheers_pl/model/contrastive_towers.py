"""Contrastive towers: a small caption encoder and an image head for SigLIP-style training of the semantic encoder.

Used by the `tokenizer` stage when the semantic encoder is trained from scratch (tiny preset): the text tower is a
pre-LN transformer over caption ids, mean-pooled over real tokens and projected; the image head mean-pools the
semantic encoder's output tokens and projects them into the same space. The sigmoid loss (learned temperature and
bias) lives here as a sub-module so its two scalars are saved and trained with the towers (`model.contrastive.*`).
Later stages can reuse the towers as a local CLIP for CLIP-score style metrics.

Shape legend: B batch, L caption length, M semantic tokens, C_img semantic encoder width, D text width,
E joint embedding width.

References:
    Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), arXiv 2303.15343.
"""

from dataclasses import dataclass

import torch
from torch import nn

from cheers_pl.model.layers import masked_mean
from cheers_pl.objective.contrastive import SigmoidContrastiveLoss, SigmoidContrastiveLossConfig


@dataclass
class ContrastiveTowersConfig:
    """Configuration of `ContrastiveTowers`. Defaults are the tiny preset (the full preset uses pretrained SigLIP2
    and needs no towers: set `model.contrastive` to null)."""

    vocab_size: int = 1024  # replaced by the text tokenizer's length when the stage builds the towers
    dim: int = 64  # text transformer width
    num_layers: int = 2
    num_heads: int = 2
    embed_dim: int = 64  # joint embedding width E
    max_len: int = 64  # longest caption in tokens (the stage truncates longer ones)
    init_temperature: float = 10.0  # SigLIP: 10
    # SigLIP's -10 suits its 32k batches; ≈ -log(batch) makes σ(logit) ≈ 1/batch at start for small batches
    # (a learned scalar moves only ~lr per Adam step, so a far-off start costs thousands of steps)
    init_bias: float = -3.0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "embed_dim", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.contrastive.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"model.contrastive.dim={self.dim} must be divisible by num_heads={self.num_heads}")
        if self.init_temperature <= 0:
            raise ValueError(f"model.contrastive.init_temperature must be > 0, got {self.init_temperature}")


class ContrastiveTowers(nn.Module):
    """Text tower + image head + sigmoid contrastive loss."""

    def __init__(self, cfg: ContrastiveTowersConfig, image_dim: int) -> None:
        super().__init__()
        if image_dim < 1:
            raise ValueError(f"image_dim must be >= 1, got {image_dim}")
        self.cfg = cfg
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Parameter(torch.randn(1, cfg.max_len, cfg.dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.num_heads, dim_feedforward=4 * cfg.dim, dropout=0.0, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.text_encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.text_norm = nn.LayerNorm(cfg.dim)
        self.text_proj = nn.Linear(cfg.dim, cfg.embed_dim)
        self.image_norm = nn.LayerNorm(image_dim)
        self.image_proj = nn.Linear(image_dim, cfg.embed_dim)
        self.loss_fn = SigmoidContrastiveLoss(
            SigmoidContrastiveLossConfig(init_temperature=cfg.init_temperature, init_bias=cfg.init_bias)
        )

    def embed_texts(self, ids_BL: torch.Tensor, pad_mask_BL: torch.Tensor) -> torch.Tensor:
        """Caption ids (any padding side; `pad_mask` True on real tokens) → embeddings B,E.

        Raises:
            ValueError: for mismatched shapes, captions longer than `max_len`, or a row without real tokens.
        """
        if ids_BL.ndim != 2 or pad_mask_BL.shape != ids_BL.shape:
            raise ValueError(
                f"ids and pad_mask must both be B,L; got {tuple(ids_BL.shape)}, {tuple(pad_mask_BL.shape)}"
            )
        if ids_BL.shape[1] > self.cfg.max_len:
            raise ValueError(f"caption length {ids_BL.shape[1]} exceeds model.contrastive.max_len={self.cfg.max_len}")
        mask = pad_mask_BL.bool()
        if not mask.any(dim=1).all():
            raise ValueError("every caption needs at least one real token (pad_mask row of all False)")
        x_BLD = self.token_embed(ids_BL) + self.pos_embed[:, : ids_BL.shape[1]]
        x_BLD = self.text_encoder(x_BLD, src_key_padding_mask=~mask)
        return self.text_proj(masked_mean(self.text_norm(x_BLD), mask))

    def embed_images(self, semantic_BMC: torch.Tensor) -> torch.Tensor:
        """Semantic encoder output tokens B,M,C_img → mean-pooled, projected embeddings B,E."""
        if semantic_BMC.ndim != 3 or semantic_BMC.shape[-1] != self.image_norm.normalized_shape[0]:
            raise ValueError(
                f"semantic tokens must be B,N,{self.image_norm.normalized_shape[0]}, got {tuple(semantic_BMC.shape)}"
            )
        return self.image_proj(self.image_norm(semantic_BMC.mean(dim=1)))

    def loss(self, img_emb_BE: torch.Tensor, txt_emb_BE: torch.Tensor) -> torch.Tensor:
        """Sigmoid contrastive loss; row i of each input is a matched image–caption pair."""
        return self.loss_fn(img_emb_BE, txt_emb_BE)

    def similarity(self, img_emb_BE: torch.Tensor, txt_emb_BE: torch.Tensor) -> torch.Tensor:
        """Pairwise logits t·cos + b, B_img,B_txt (rows images, columns captions)."""
        return self.loss_fn.logits(img_emb_BE, txt_emb_BE)
