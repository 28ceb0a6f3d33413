"""Masked mean pooling over a sequence (the contrastive text tower's caption vector, the flow head's pooled prompt)."""

import torch


def masked_mean(x_BLD: torch.Tensor, mask_BL: torch.Tensor) -> torch.Tensor:
    """Mean B×D of `x_BLD` over the positions where the bool `mask_BL` is True (zero for a row without any)."""
    if mask_BL.dtype != torch.bool or mask_BL.shape != x_BLD.shape[:2]:
        raise ValueError(
            f"mask_BL must be a bool B×L mask for x {tuple(x_BLD.shape)}, got {mask_BL.dtype} {tuple(mask_BL.shape)}"
        )
    weights_BL1 = mask_BL.to(x_BLD.dtype).unsqueeze(-1)
    return (x_BLD * weights_BL1).sum(dim=1) / weights_BL1.sum(dim=1).clamp(min=1)
