"""Token-attribute labels of synthetic scenes (cheers_pl/data/synthetic_labels.py)."""

import numpy as np
import pytest

from cheers_pl.data.synthetic import make_sample
from cheers_pl.data.synthetic_labels import ATTRIBUTES, attribute_classes, token_attribute_labels
from cheers_pl.data.synthetic_scene import Scene, SceneObject, SyntheticConfig

WORLD = SyntheticConfig()


def test_a_large_square_labels_the_cells_it_covers() -> None:
    square = SceneObject("square", "red", "large", x=20, y=20, texture="stripes", digit=7)  # covers pixels 10..30
    labels = token_attribute_labels(Scene([square], 64), WORLD, grid=8)
    classes = attribute_classes(WORLD)
    assert labels.shape == (len(ATTRIBUTES), 8, 8) and labels.dtype == np.int64
    covered = labels[0] > 0
    assert covered[1:4, 1:4].all() and covered.sum() == 9  # cells 1..3 (pixels 8..31) in both axes
    want = {"shape": "square", "color": "red", "texture": "stripes", "size": "large", "digit": "7"}
    for a, name in enumerate(ATTRIBUTES):
        assert classes[name][labels[a, 2, 2]] == want[name]
        assert (labels[a][~covered] == 0).all()  # "none" elsewhere


def test_every_object_of_sampled_scenes_owns_a_cell_and_bad_grids_are_refused() -> None:
    for i in range(20):
        scene = Scene.from_json(make_sample(i, "train", WORLD)["json"]["scene"])
        labels = token_attribute_labels(scene, WORLD, grid=8)
        colours = {attribute_classes(WORLD)["color"][c] for c in np.unique(labels[1]) if c}
        assert colours == {o.color for o in scene.objects}
    with pytest.raises(ValueError, match="must divide"):
        token_attribute_labels(Scene([], 64), WORLD, grid=7)
