"""Fréchet distance (FID) between generated and real images with torchmetrics, in one of two feature spaces.

- `semantic`: pooled features of the model's own semantic encoder (any `images -> B×D` function, wrapped by
  `SemanticFeatures`); always available (tiny preset, no downloads), but not comparable across runs whose encoders
  differ.
- `inception`: torch-fidelity's InceptionV3 (2048-d pool features, the standard FID) from a LOCAL weights file.
`fid_metric` builds either; the validation callback and the evaluate command both use it.

References:
    Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", 2017.

Legend: B batch, H/W image size, D feature width.
"""

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance

FEATURES = ("semantic", "inception")


class SemanticFeatures(nn.Module):
    """Adapts a feature function (images B×3×H×W in [-1, 1] → B×D) to torchmetrics' custom-feature interface.

    The function is stored as a plain attribute, so the stage is not registered as a sub-module of the metric
    (the metric never moves, saves or counts the model's parameters).
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], num_features: int) -> None:
        super().__init__()
        self.fn = fn
        self.num_features = num_features

    def forward(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Returns B×D features."""
        return self.fn(images_B3HW).flatten(1)


def check_inception_weights(path: str | None) -> Path:
    """Returns the weights path, or raises a ValueError naming it and the config key when it is unset or missing."""
    if path is None or not Path(path).is_file():
        raise ValueError(
            f"callbacks.fid.inception_weights: InceptionV3 weights file {path!r} not found. FID with "
            "feature='inception' needs a local torch-fidelity weights file (weights-inception-2015-12-05-6726825d.pth; "
            "nothing is downloaded); set callbacks.fid.inception_weights or use feature='semantic'."
        )
    return Path(path)


def fid_metric(
    feature: str,
    inception_weights: str | None,
    feature_fn: Callable[[torch.Tensor], torch.Tensor] | None,
    probe: torch.Tensor | None,
) -> FrechetInceptionDistance:
    """The FID metric of `feature`: InceptionV3 from `inception_weights` (inputs in [0, 1]) or `feature_fn`
    (inputs in [-1, 1]; its width is read off one `probe` image)."""
    if feature == "inception":
        weights = check_inception_weights(inception_weights)
        return FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=str(weights))
    num_features = feature_fn(probe[:1]).flatten(1).shape[-1]
    return FrechetInceptionDistance(feature=SemanticFeatures(feature_fn, num_features))
