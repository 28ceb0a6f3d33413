"""Image→caption top-1 retrieval among K candidates: the tokenizer stage's contrastive towers as a metric.

Shape legend: B pairs, D embedding width.
"""

import torch
import torch.nn.functional as F

from cheers_pl.objective.contrastive import check_pair


@torch.no_grad()
def retrieval_top1(img_emb_BD: torch.Tensor, txt_emb_BD: torch.Tensor) -> float:
    """Fraction of images whose most similar caption (cosine) is their own (image → caption top-1)."""
    check_pair(img_emb_BD, txt_emb_BD)
    cos_BB = F.normalize(img_emb_BD.float(), dim=-1) @ F.normalize(txt_emb_BD.float(), dim=-1).T
    hits = cos_BB.argmax(dim=1) == torch.arange(cos_BB.shape[0], device=cos_BB.device)
    return hits.float().mean().item()
