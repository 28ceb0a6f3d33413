"""CLIP score of images against their prompts: torchmetrics' formula, two scorers.

`score = max(100 · mean_i cos(img_emb_i, txt_emb_i), 0)` (the mean over images is clamped, not each cosine):
- `local_clip_score(path)`: torchmetrics `CLIPScore` over a local CLIP directory (`transformers` `CLIPModel` +
  `CLIPProcessor` saved with `save_pretrained`); nothing is downloaded.
- `ContrastiveCLIPScore(embed)`: the same formula over any `(images, texts) -> (img_emb, txt_emb)` function, e.g. the
  contrastive towers trained in the `tokenizer` stage (only comparable within one model).

The clamp hides a weak scorer: with the tiny towers the mean cosine is often below 0 and the score reads 0.0 for
every model. `matched_and_mismatched` therefore also reports the unclamped mean of 100·cos over matched pairs and
over mismatched ones (each image against the next image's prompt), and their gap: a scorer that sees the prompt
gives a positive gap, whatever its offset.

References:
    Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", 2021.

Legend: B batch, H/W image size, D embedding width.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.multimodal.clip_score import CLIPScore

EmbedFn = Callable[[torch.Tensor | None, list[str] | None], tuple[torch.Tensor | None, torch.Tensor | None]]


class ContrastiveCLIPScore(Metric):
    """torchmetrics CLIPScore's formula over embeddings from a function `(images, texts) -> (img_emb, txt_emb)`.

    The function is a plain attribute, so the stage is not a sub-module of the metric.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, embed: EmbedFn, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embed = embed
        self.add_state("score", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("n_samples", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, images_B3HW: torch.Tensor, texts: list[str]) -> None:
        """Adds 100·cos(img_emb, txt_emb) of each image/prompt pair (images in [-1, 1])."""
        if images_B3HW.shape[0] != len(texts):
            raise ValueError(f"got {images_B3HW.shape[0]} images for {len(texts)} prompts")
        img_BD, txt_BD = self.embed(images_B3HW, texts)
        cos_B = F.cosine_similarity(img_BD.double(), txt_BD.double().to(img_BD.device), dim=-1)
        self.score += 100 * cos_B.sum()
        self.n_samples += len(texts)

    def compute(self) -> torch.Tensor:
        """max(mean score, 0), as torchmetrics CLIPScore."""
        return torch.clamp(self.score / self.n_samples, min=0.0).float()


class CLIPFeatures(nn.Module):
    """Adapts a `transformers.CLIPModel` to the tensor-returning `get_*_features` torchmetrics expects.

    transformers 5 returns a `BaseModelOutputWithPooling` whose `pooler_output` holds the projected embedding;
    transformers 4 returned the tensor itself. Both are accepted.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image embeddings B×D."""
        return self._tensor(self.model.get_image_features(pixel_values=pixel_values))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projected text embeddings B×D."""
        return self._tensor(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def local_clip_score(path: str) -> CLIPScore:
    """torchmetrics CLIPScore over a local CLIP directory; a ValueError names the key when it is missing."""
    if not Path(path).is_dir():
        raise ValueError(f"callbacks.clip_score.model: local CLIP directory {path!r} not found (nothing is downloaded)")
    from transformers import CLIPModel, CLIPProcessor

    def load() -> tuple[CLIPFeatures, Any]:
        return CLIPFeatures(CLIPModel.from_pretrained(path).eval()), CLIPProcessor.from_pretrained(path)

    return CLIPScore(model_name_or_path=load)


def score_sums(metric: Metric) -> tuple[float, int]:
    """(Σ 100·cos, number of pairs) of the pairs a CLIP-score metric has seen on this process (before clamping)."""
    return float(metric.score), int(metric.n_samples)


def mismatched(texts: list[str]) -> list[str]:
    """Each image's prompt replaced by the next image's (a derangement for two or more prompts)."""
    return texts[1:] + texts[:1]


def matched_and_mismatched(
    metric: Metric, images: torch.Tensor, texts: list[str], reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
) -> dict[str, float]:
    """The clamped CLIP score of matched pairs plus the unclamped means of matched and mismatched pairs and their gap.

    `reduce` sums a tensor over processes (identity on one); the metric is reset before and after.
    """
    out: dict[str, float] = {}
    for name, prompts in (("matched", texts), ("mismatched", mismatched(texts))):
        metric.reset()
        if texts:
            metric.update(images, prompts)
        total = reduce(torch.tensor(score_sums(metric), dtype=torch.float64, device=images.device))
        out[f"{name}_raw"] = float(total[0] / total[1].clamp_min(1))
    out["clip_score"] = max(out["matched_raw"], 0.0)
    out["gap"] = out["matched_raw"] - out["mismatched_raw"]
    metric.reset()
    return out
