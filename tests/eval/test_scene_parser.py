"""Tests for the detector-free scene parser (cheers_pl/eval/scene_parser.py)."""

import itertools
import warnings

import numpy as np
import pytest
from scipy import ndimage

from cheers_pl.data.synthetic import Scene, SceneObject, SyntheticConfig, make_sample, render
from cheers_pl.eval.scene_parser import ParsedObject, aggregate_matches, match_scene, parse_scene, read_digit

CFG = SyntheticConfig()


def _agreement(n: int, corrupt=None, cfg: SyntheticConfig = CFG) -> dict[str, float]:
    results = []
    for i in range(n):
        sample = make_sample(i, "test", cfg)
        image = sample["image"] if corrupt is None else corrupt(sample["image"])
        results.append(match_scene(parse_scene(image, cfg), Scene.from_json(sample["json"]["scene"])))
    return aggregate_matches(results)


def test_parser_recovers_clean_renders() -> None:
    pooled = _agreement(300)
    print(f"\nclean renders (300 scenes): {pooled}")
    assert pooled["all"] >= 0.99 and pooled["count"] >= 0.99


def test_parser_under_noise_and_blur() -> None:
    rng = np.random.default_rng(0)

    def noise(img: np.ndarray) -> np.ndarray:
        return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)

    def blur(img: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(img.astype(np.float32), size=(3, 3, 1)).round().astype(np.uint8)

    noisy, blurred = _agreement(100, noise), _agreement(100, blur)
    print(f"\ngaussian noise sigma=8 (100 scenes): {noisy}\n3x3 box blur (100 scenes): {blurred}")
    assert noisy["all"] >= 0.95  # mild noise stays far below the half-distance between reference colours
    # blur is only measured for texture and digit (2-pixel patterns wash out); geometry must survive it
    assert blurred["color"] >= 0.9 and blurred["count"] >= 0.9 and blurred["shape"] >= 0.9


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond", "cross"])
def test_every_attribute_combination_of_a_shape(shape: str) -> None:
    cfg = SyntheticConfig(shapes=("circle", "square", "triangle", "diamond", "cross"))
    for color, size, texture in itertools.product(cfg.colors, cfg.sizes, cfg.textures):
        obj = SceneObject(shape, color, size, 30, 33, texture=texture)
        (parsed,) = parse_scene(render(Scene([obj], 64), cfg), cfg)
        got = (parsed.shape, parsed.color, parsed.size, parsed.texture, parsed.digit, parsed.x, parsed.y)
        assert got == (shape, color, size, texture, None, 30.0, 33.0)


def test_digits_recognised_on_large_objects() -> None:
    for digit, shape, texture in itertools.product(range(10), CFG.shapes, ("solid", "stripes")):
        obj = SceneObject(shape, "cyan", "large", 40, 25, texture=texture, digit=digit)
        (parsed,) = parse_scene(render(Scene([obj], 64), CFG), CFG)
        assert (parsed.digit, parsed.texture, parsed.shape) == (digit, texture, shape)


def test_parser_works_at_other_image_sizes() -> None:
    cfg = SyntheticConfig(image_size=128)
    pooled = _agreement(20, cfg=cfg)
    assert pooled["all"] == 1.0


def test_small_specks_are_ignored() -> None:
    sample = make_sample(3, "train", CFG)
    img = sample["image"].copy()
    img[0, 0] = (220, 30, 30)
    img[63, 40:42] = (30, 70, 220)
    parsed = parse_scene(img, CFG)
    assert len(parsed) == len(sample["json"]["scene"]["objects"])
    assert parse_scene(np.full((64, 64, 3), CFG.background, dtype=np.uint8), CFG) == []


def test_match_scene_counts_errors() -> None:
    truth = Scene(
        [SceneObject("circle", "red", "large", 15, 15), SceneObject("square", "blue", "small", 45, 45, "dots")], 64
    )
    parsed = parse_scene(render(truth, CFG), CFG)
    assert match_scene(parsed, truth)["all"] == 1.0
    wrong = [ParsedObject("circle", "green", "large", 15.0, 15.0, "solid", None, 300)]
    result = match_scene(wrong, truth)
    assert (result["num_matched"], result["count_correct"]) == (1, 0)
    assert (result["shape"], result["color"], result["all"]) == (0.5, 0.0, 0.0)
    far = [ParsedObject("circle", "red", "large", 50.0, 10.0, "solid", None, 300)]
    assert match_scene(far, truth)["num_matched"] == 0
    assert match_scene([], Scene([], 64))["all"] == 1.0


def test_parse_scene_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="H x W x 3"):
        parse_scene(np.zeros((64, 64), dtype=np.uint8), CFG)


@pytest.mark.parametrize(("height", "width"), [(6, 1), (1, 6), (2, 2), (4, 1)])
def test_read_digit_on_a_box_smaller_than_the_glyph_grid_reads_no_empty_cell(height: int, width: int) -> None:
    """Generated images hold ink boxes narrower than the 3×5 grid; no cell may be an empty slice (a NaN mean)."""
    ink = np.zeros((8, 8), dtype=bool)
    ink[1 : 1 + height, 2 : 2 + width] = True
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        read_digit(ink)
