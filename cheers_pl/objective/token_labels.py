"""Token classification loss: mean cross-entropy over the labelled tokens of every attribute.

Shape legend: B batch, M tokens, A attributes, K_a classes of attribute a.
"""

import torch
import torch.nn.functional as F

from cheers_pl.objective.lm import IGNORE_INDEX


def token_classification_loss(logits: list[torch.Tensor], labels_BAM: torch.Tensor) -> torch.Tensor:
    """Sum over attributes of the token-mean cross-entropy; label `IGNORE_INDEX` marks unlabelled tokens.

    Args:
        logits: A tensors B×M×K_a.
        labels_BAM: Long labels B×A×M.

    Returns:
        A scalar; a zero that keeps the graph when no token is labelled.
    """
    if labels_BAM.ndim != 3 or labels_BAM.shape[1] != len(logits):
        raise ValueError(f"labels must be B×{len(logits)}×M, got {tuple(labels_BAM.shape)}")
    total = logits[0].float().sum() * 0.0
    for a, logits_BMK in enumerate(logits):
        if logits_BMK.shape[:2] != (labels_BAM.shape[0], labels_BAM.shape[2]):
            raise ValueError(f"attribute {a}: logits {tuple(logits_BMK.shape)} do not match labels")
        target = labels_BAM[:, a]
        if (target != IGNORE_INDEX).any():
            total = total + F.cross_entropy(
                logits_BMK.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX
            )
    return total
