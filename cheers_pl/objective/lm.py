"""Next-token cross-entropy on the labelled (assistant) tokens; labels are aligned with the ids and shifted here."""

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def lm_loss(logits_BLV: torch.Tensor, labels_BL: torch.Tensor) -> torch.Tensor:
    """Mean CE of predicting token i+1 from position i over labelled targets (0 with the graph kept if none)."""
    logits = logits_BLV[:, :-1].reshape(-1, logits_BLV.shape[-1])
    targets = labels_BL[:, 1:].reshape(-1)
    if not bool((targets != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
