"""Token-attribute heads: one linear classifier per attribute on every semantic token (tokenizer pretraining only).

They read the semantic encoder's output tokens and predict, per token, the attributes of the object under it
(`cheers_pl.data.synthetic_labels`). Being linear, they push each token to carry its object's attributes in a form
the LLM can read directly. Later stages neither build nor load them.

Shape legend: B batch, M tokens, C encoder width, K_a classes of attribute a.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AttributeHeadsConfig:
    """Encoder width and the number of classes of each attribute, in order."""

    dim: int
    num_classes: tuple[int, ...]

    def __post_init__(self) -> None:
        self.num_classes = tuple(int(k) for k in self.num_classes)
        if self.dim < 1 or not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"attribute heads need dim >= 1 and >= 2 classes per attribute, got {self}")


class AttributeHeads(nn.Module):
    """`forward(tokens_BMC)` → one logits tensor B×M×K_a per attribute."""

    def __init__(self, cfg: AttributeHeadsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleList(nn.Linear(cfg.dim, k) for k in cfg.num_classes)

    def forward(self, tokens_BMC: torch.Tensor) -> list[torch.Tensor]:
        """Per-attribute logits, each B×M×K_a."""
        if tokens_BMC.ndim != 3 or tokens_BMC.shape[-1] != self.cfg.dim:
            raise ValueError(f"tokens must be B,M,{self.cfg.dim}, got {tuple(tokens_BMC.shape)}")
        return [head(tokens_BMC) for head in self.heads]
