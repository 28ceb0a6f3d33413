"""Image→caption top-1 retrieval among K candidates: the tokenizer stage's contrastive towers as a metric.

Shape legend: B pairs, D embedding width.
"""

from collections.abc import Callable

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


@torch.no_grad()
def retrieval_scores(
    embed: Callable[[torch.Tensor, list[str]], tuple[torch.Tensor, torch.Tensor]],
    images_B3HW: torch.Tensor,
    captions: list[str],
    num_candidates: int = 32,
    batch_size: int = 64,
) -> dict[str, float]:
    """Image→caption top-1 among `num_candidates`, averaged over consecutive groups of the images.

    `embed(images, captions) -> (image embeddings, caption embeddings)` (the stage's `contrastive_embed`).
    """
    groups = len(captions) // num_candidates
    if groups < 1:
        raise ValueError(f"retrieval needs at least num_candidates={num_candidates} pairs, got {len(captions)}")
    img, txt = [], []
    for start in range(0, groups * num_candidates, batch_size):
        stop = min(start + batch_size, groups * num_candidates)
        i, t = embed(images_B3HW[start:stop], captions[start:stop])
        img.append(i.float().cpu())
        txt.append(t.float().cpu())
    img_emb, txt_emb = torch.cat(img), torch.cat(txt)
    per_group = [
        retrieval_top1(
            img_emb[g * num_candidates : (g + 1) * num_candidates],
            txt_emb[g * num_candidates : (g + 1) * num_candidates],
        )
        for g in range(groups)
    ]
    return {"top1": sum(per_group) / groups, "chance": 1 / num_candidates, "num_groups": groups,
            "num_candidates": num_candidates}  # fmt: skip
