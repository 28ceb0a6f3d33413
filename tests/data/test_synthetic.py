"""Tests for the synthetic compositional world (cheers_pl/data/synthetic*.py)."""

import json
import re
from collections import Counter

import numpy as np
import pytest

from cheers_pl.data.synthetic import (
    Scene,
    SceneObject,
    SyntheticConfig,
    captions,
    held_out_factors,
    make_sample,
    questions,
    render,
    sample_rng,
    sample_scene,
    scene_from_spec,
)
from cheers_pl.data.synthetic_render import glyph_array, glyph_offset, object_layers
from cheers_pl.data.synthetic_scene import INK_RGB, KNOWN_SHAPES, PALETTE, REGIONS, region_of, variant_rgb

CFG = SyntheticConfig()
WORDS = {w: i for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six"])}
ADJ = {"solid": "solid", "striped": "stripes", "checkered": "checks", "dotted": "dots"}
SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond"}


def _scenes(split: str, n: int, cfg: SyntheticConfig = CFG) -> list[Scene]:
    return [sample_scene(sample_rng(cfg, split, i), cfg, split) for i in range(n)]


# ---------- independent checkers (written from the spec, not from synthetic_text) ----------


def _resolve(ref: str, objs: list[dict]) -> list[dict]:
    words = ref.removeprefix("the ").split()
    noun, adjs = words[-1], words[:-1]
    out = [o for o in objs if noun == "object" or o["shape"] == noun]
    for w in adjs:
        out = [o for o in out if w in (o["size"], o["color"]) or ADJ.get(w) == o["texture"]]
    return out


def _check_qa(q: dict, objs: list[dict]) -> None:
    text, ans, cat = q["question"], q["answer"], q["category"]
    assert ans == ans.lower() and " " not in ans, q
    if cat == "count":
        if text == "how many objects are there?":
            assert WORDS[ans] == len(objs)
        elif m := re.fullmatch(r"how many (\w+) objects are there\?", text):
            assert WORDS[ans] == sum(o["color"] == m[1] for o in objs)
        else:
            m = re.fullmatch(r"how many (\w+) are there\?", text)
            assert WORDS[ans] == sum(o["shape"] == SINGULAR[m[1]] for o in objs)
        return
    if cat == "relation":
        m = re.fullmatch(r"is (the .+?) (to the left of|to the right of|above|below) (the .+)\?", text)
        (a,), (b,) = _resolve(m[1], objs), _resolve(m[3], objs)
        truth = {
            "to the left of": a["x"] < b["x"],
            "to the right of": a["x"] > b["x"],
            "above": a["y"] < b["y"],
            "below": a["y"] > b["y"],
        }[m[2]]
        gap = abs(a["x"] - b["x"]) if "left" in m[2] or "right" in m[2] else abs(a["y"] - b["y"])
        assert gap >= CFG.radius("small"), q  # never asked when ambiguous
        assert ans == ("yes" if truth else "no"), q
        return
    pattern = {
        "color": r"what color is (the .+)\?",
        "shape": r"what shape is (the .+)\?",
        "texture": r"what texture does (the .+) have\?",
        "digit": r"what digit is written on (the .+)\?",
    }[cat]
    (obj,) = _resolve(re.fullmatch(pattern, text)[1], objs)  # unique referent
    expected = {
        "color": obj["color"],
        "shape": obj["shape"],
        "digit": str(obj["digit"]),
        "texture": {v: k for k, v in ADJ.items()}[obj["texture"]],
    }[cat]
    assert ans == expected, q


def _parse_listing(text: str) -> list[str]:
    parts = text.split(", ")
    return parts[:-1] + parts[-1].split(" and ")


def _check_captions(caps: list[str], scene: Scene) -> bool:
    """Assert the caption facts; returns whether a relation caption was checked."""
    objs = scene.objects
    head, body = caps[0].split(": ")
    assert WORDS[head.split()[0]] == len(objs)
    described = Counter()
    for item in _parse_listing(body):
        m = re.fullmatch(r"an? (\w+) (\w+) (\w+) (\w+)(?: with the digit (\d))? (?:at|on|in) the (.+)", item)
        digit = int(m[5]) if m[5] else None
        described[(m[1], m[2], ADJ[m[3]], m[4], digit, m[6])] += 1
    truth = Counter((o.size, o.color, o.texture, o.shape, o.digit, region_of(o.x, o.y, 64)) for o in objs)
    assert described == truth, caps[0]
    # shape-count template and colour-count template
    shape_counts = re.findall(r"(\w+) (circles?|squares?|triangles?|diamonds?)", caps[2].split(": ")[1])
    assert {SINGULAR.get(s, s): WORDS[k] for k, s in shape_counts} == Counter(o.shape for o in objs)
    color_counts = re.findall(r"(\w+) (\w+) objects?", caps[3].split(": ")[1])
    assert {c: WORDS[k] for k, c in color_counts} == Counter(o.color for o in objs)
    short = Counter(tuple(item.split()[1:]) for item in _parse_listing(caps[5]))
    assert short == Counter((o.color, o.shape) for o in objs)
    if m := re.fullmatch(r"an? (\w+) (\w+) (to the left of|to the right of|above|below) an? (\w+) (\w+)", caps[4]):
        key = {
            "to the left of": lambda a, b: a.x < b.x,
            "to the right of": lambda a, b: a.x > b.x,
            "above": lambda a, b: a.y < b.y,
            "below": lambda a, b: a.y > b.y,
        }[m[3]]
        assert any(
            key(a, b) for a in objs for b in objs if (a.color, a.shape, b.color, b.shape) == (m[1], m[2], m[4], m[5])
        )
        return True
    return False


# ---------- tests ----------


def test_make_sample_is_deterministic_and_seed_dependent() -> None:
    a, b = make_sample(7, "train", CFG), make_sample(7, "train", CFG)
    assert a["key"] == "train_00000007"
    assert a["image"].dtype == np.uint8 and a["image"].shape == (64, 64, 3)
    assert a["image"].tobytes() == b["image"].tobytes() and a["json"] == b["json"]
    assert json.loads(json.dumps(a["json"])) == a["json"]  # plain JSON types only
    assert a["caption"] == a["json"]["captions"][0]
    other_seed = make_sample(7, "train", SyntheticConfig(seed=1))
    other_index = make_sample(8, "train", CFG)
    other_split = make_sample(7, "val", CFG)
    for other in (other_seed, other_index, other_split):
        assert other["image"].tobytes() != a["image"].tobytes()


def test_scene_json_round_trip() -> None:
    scene = _scenes("val", 1)[0]
    assert Scene.from_json(json.loads(json.dumps(scene.to_json()))) == scene
    with pytest.raises(ValueError, match="colour"):
        SceneObject.from_json({**scene.objects[0].to_json(), "colour": "red"})


def test_held_out_pairs_and_counts_never_in_train_but_in_eval() -> None:
    for scene in _scenes("train", 2000):
        assert len(scene.objects) not in CFG.held_out_counts
        assert not any((o.color, o.shape) in CFG.held_out_pairs for o in scene.objects)
        assert not held_out_factors(scene, CFG)
    for split in ("val", "test"):
        factors = [held_out_factors(s, CFG) for s in _scenes(split, 400)]
        frac = np.mean([bool(f) for f in factors])
        assert 0.4 <= frac <= 0.6, frac  # eval_held_out_prob = 0.5
        flat = {f for fs in factors for f in fs}
        assert "count:4" in flat and {f"pair:{c}/{s}" for c, s in CFG.held_out_pairs} <= flat


def test_objects_inside_image_and_separated() -> None:
    for scene in _scenes("test", 500):
        boxes = []
        for o in scene.objects:
            r = CFG.radius(o.size)
            assert CFG.margin <= o.x - r and o.x + r <= 63 - CFG.margin
            assert CFG.margin <= o.y - r and o.y + r <= 63 - CFG.margin
            boxes.append((o.x - r, o.y - r, o.x + r, o.y + r))
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                gap = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3]) - 1
                assert gap >= CFG.margin


def test_digits_only_on_large_objects_and_glyphs_fit() -> None:
    objs = [o for s in _scenes("train", 500) for o in s.objects]
    assert all(o.size == "large" for o in objs if o.digit is not None)
    assert any(o.digit is not None for o in objs)
    for size in (64, 96, 128, 256):
        cfg = SyntheticConfig(image_size=size)
        for shape in KNOWN_SHAPES:
            assert glyph_offset(shape, cfg.radius("large"), cfg.glyph_scale) is not None, (size, shape)
    assert len({glyph_array(d).tobytes() for d in range(10)}) == 10


def test_render_is_crisp_and_draws_each_layer() -> None:
    obj = SceneObject("square", "orange", "large", 30, 30, texture="checks", digit=8)
    img = render(Scene([obj], 64), CFG)
    colors = {tuple(c) for c in img.reshape(-1, 3)}
    assert colors == {CFG.background, PALETTE["orange"], variant_rgb(PALETTE["orange"]), INK_RGB}
    body, tex, ink = object_layers(obj, CFG)
    assert (img[20:41, 20:41][ink] == INK_RGB).all() and ink.sum() == glyph_array(8).sum() * CFG.glyph_scale**2
    assert 0.3 < tex.sum() / body.sum() < 0.5  # checks cover about half, minus the digit plate
    with pytest.raises(ValueError, match="leaves"):
        render(Scene([SceneObject("circle", "red", "large", 3, 30)], 64), CFG)


def test_questions_are_true_and_unambiguous() -> None:
    seen = Counter()
    for i in range(300):
        sample = make_sample(i, "val", CFG)
        objs = sample["json"]["scene"]["objects"]
        for q in sample["json"]["qa"]:
            _check_qa(q, objs)
            seen[q["category"]] += 1
    assert set(seen) == {"count", "color", "shape", "relation", "texture", "digit"}


def test_captions_state_only_true_facts() -> None:
    checked_relations = 0
    for i in range(300):
        sample = make_sample(i, "test", CFG)
        checked_relations += _check_captions(sample["json"]["captions"], Scene.from_json(sample["json"]["scene"]))
    assert checked_relations > 100
    scene = _scenes("train", 1)[0]
    assert captions(scene, np.random.default_rng(0))[0] == captions(scene, np.random.default_rng(1))[0]
    assert len(set(captions(scene, np.random.default_rng(0)))) >= 4 or len(scene.objects) == 1


def test_questions_skip_ambiguous_referents() -> None:
    twins = [SceneObject("circle", "red", "small", 10, 10), SceneObject("circle", "red", "small", 40, 40)]
    qa = questions(Scene(twins, 64), np.random.default_rng(0), CFG)
    assert {q["category"] for q in qa} == {"count"}


def test_scene_from_spec_places_objects_in_regions() -> None:
    rng = np.random.default_rng(0)
    for region in REGIONS:
        spec = [
            {"color": "red", "shape": "circle", "size": "large", "region": region},
            {"color": "blue", "shape": "cross", "texture": "dots"},
        ]
        scene = scene_from_spec(spec, CFG, rng)
        assert scene.objects[0].region(64) == region
        assert (scene.objects[1].shape, scene.objects[1].texture, scene.objects[1].digit) == ("cross", "dots", None)
        render(scene, CFG)
    with pytest.raises(ValueError, match="colour"):
        scene_from_spec([{"color": "red", "shape": "circle", "colour": "x"}], CFG, rng)
    with pytest.raises(ValueError, match="region"):
        scene_from_spec([{"color": "red", "shape": "circle", "region": "middle"}], CFG, rng)
    with pytest.raises(ValueError, match="place"):
        scene_from_spec([{"color": "red", "shape": "circle", "size": "large", "region": "top left"}] * 2, CFG, rng)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"image_size": 32}, "image_size"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"shapes": ("circle", "hexagon")}, "shapes"),
        ({"colors": ("red", "red")}, "colors"),
        ({"digit_prob": 1.5}, "digit_prob"),
        ({"background": (220, 30, 30)}, "background"),
        ({"held_out_pairs": (("pink", "circle"),)}, "held_out_pairs"),
        ({"held_out_counts": (9,)}, "held_out_counts"),
        ({"min_objects": 4, "max_objects": 4}, "held_out_counts"),
        ({"shapes": ("circle",), "colors": ("red",), "held_out_pairs": (("red", "circle"),)}, "held_out_pairs"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**kwargs)


def test_config_accepts_lists_from_yaml() -> None:
    cfg = SyntheticConfig(shapes=["circle", "square"], held_out_pairs=[["red", "circle"]], background=[255, 255, 255])
    assert cfg.held_out_pairs == (("red", "circle"),) and cfg.background == (255, 255, 255)
    with pytest.raises(ValueError, match="split"):
        make_sample(0, "dev", cfg)
