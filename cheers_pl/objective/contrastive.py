"""SigLIP sigmoid contrastive loss between image and text embeddings.

Used by the `tokenizer` stage when the semantic encoder is trained from scratch with a small text tower.
Every image–text pair is an independent binary problem: label +1 on the diagonal (matched), −1 elsewhere,
logit = t·cos + b with a learned temperature t = exp(log_temperature) and bias b. We average over all B² pairs
(the SigLIP paper sums over pairs and divides by B, i.e. B times this value; only the loss scale differs).

Shape legend: B batch (pairs), D embedding width.

References:
    Zhai et al., "Sigmoid Loss for Language Image Pre-Training" (SigLIP), arXiv 2303.15343, Algorithm 1.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SigmoidContrastiveLossConfig:
    """Initial values of the learned logit scale and bias (SigLIP: t = 10, b = −10)."""

    init_temperature: float = 10.0
    init_bias: float = -10.0

    def __post_init__(self) -> None:
        if self.init_temperature <= 0:
            raise ValueError(f"init_temperature must be > 0, got {self.init_temperature}")


def check_pair(img_emb_BD: torch.Tensor, txt_emb_BD: torch.Tensor) -> None:
    if img_emb_BD.ndim != 2 or img_emb_BD.shape != txt_emb_BD.shape or img_emb_BD.shape[0] < 1:
        raise ValueError(
            f"image and text embeddings must both be B,D with B >= 1, got {tuple(img_emb_BD.shape)} "
            f"and {tuple(txt_emb_BD.shape)}"
        )


class SigmoidContrastiveLoss(nn.Module):
    """`loss = −mean_ij log σ(z_ij · (t·cos_ij + b))`, z = +1 on the diagonal and −1 elsewhere."""

    def __init__(self, cfg: SigmoidContrastiveLossConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or SigmoidContrastiveLossConfig()
        self.cfg = cfg
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        self.bias = nn.Parameter(torch.tensor(float(cfg.init_bias)))

    def logits(self, img_emb_BD: torch.Tensor, txt_emb_BD: torch.Tensor) -> torch.Tensor:
        """Pairwise logits t·cos(img_i, txt_j) + b. Returns B,B (rows images, columns texts)."""
        check_pair(img_emb_BD, txt_emb_BD)
        cos_BB = F.normalize(img_emb_BD, dim=-1) @ F.normalize(txt_emb_BD, dim=-1).T
        return self.log_temperature.exp() * cos_BB + self.bias

    def forward(self, img_emb_BD: torch.Tensor, txt_emb_BD: torch.Tensor) -> torch.Tensor:
        """Scalar sigmoid loss over all B² image–text pairs (row i of each input is a matched pair)."""
        logits_BB = self.logits(img_emb_BD, txt_emb_BD)
        labels_BB = 2 * torch.eye(logits_BB.shape[0], device=logits_BB.device, dtype=logits_BB.dtype) - 1
        return -F.logsigmoid(labels_BB * logits_BB).mean()
