"""Token-level attribute labels of a synthetic scene: what object covers each cell of the encoder's token grid.

For a g×g token grid over the image, the label of a cell is the object with the most body pixels in it (at least
`min_frac` of the cell), described by its attributes: shape, colour, texture, size and digit (`"blank"` for an object
without one); cells no object covers enough are `"none"` for every attribute. These are the dense targets of the
tokenizer stage's token-attribute loss (`cheers_pl.stage.tokenizer`): the synthetic world's exact scene description
standing in for the dense captioning with which SigLIP 2 pretrains its encoder (LocCa), so that every token carries
the attributes of the object under it.

References:
    Tschannen et al., "SigLIP 2", arXiv 2502.14786 (LocCa decoder: dense captioning); Wan et al., "LocCa: Visual
    Pretraining with Location-aware Captioners", 2024.
"""

import numpy as np

from cheers_pl.data.synthetic_render import object_bbox, object_layers
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig

ATTRIBUTES: tuple[str, ...] = ("shape", "color", "texture", "size", "digit")
NONE, BLANK = "none", "blank"


def attribute_classes(cfg: SyntheticConfig) -> dict[str, tuple[str, ...]]:
    """Class names per attribute; index 0 is `"none"` (no object in the cell)."""
    return {
        "shape": (NONE, *cfg.shapes),
        "color": (NONE, *cfg.colors),
        "texture": (NONE, *cfg.textures),
        "size": (NONE, *cfg.sizes),
        "digit": (NONE, BLANK, *map(str, range(10))),
    }


def token_attribute_labels(scene: Scene, cfg: SyntheticConfig, grid: int, min_frac: float = 1 / 16) -> np.ndarray:
    """Labels `A×g×g` (int64 class indices of `attribute_classes`, A = len(ATTRIBUTES)) of a scene's token grid.

    Raises:
        ValueError: when the image side is not a multiple of `grid`.
    """
    size = scene.image_size
    if grid < 1 or size % grid:
        raise ValueError(f"token grid {grid} must divide the image side {size}")
    cell = size // grid
    classes = attribute_classes(cfg)
    out = np.zeros((len(ATTRIBUTES), grid, grid), dtype=np.int64)
    if not scene.objects:
        return out
    cover = np.zeros((len(scene.objects), size, size), dtype=np.int32)
    for k, obj in enumerate(scene.objects):
        body, _, _ = object_layers(obj, cfg)
        x0, y0, x1, y1 = object_bbox(obj, cfg)
        cover[k, y0 : y1 + 1, x0 : x1 + 1] = body
    per_cell = cover.reshape(len(scene.objects), grid, cell, grid, cell).sum(axis=(2, 4))
    best, most = per_cell.argmax(axis=0), per_cell.max(axis=0)
    for gy, gx in zip(*np.nonzero(most >= min_frac * cell * cell), strict=True):
        obj = scene.objects[best[gy, gx]]
        values = (obj.shape, obj.color, obj.texture, obj.size, BLANK if obj.digit is None else str(obj.digit))
        for a, (name, value) in enumerate(zip(ATTRIBUTES, values, strict=True)):
            out[a, gy, gx] = classes[name].index(value)
    return out
