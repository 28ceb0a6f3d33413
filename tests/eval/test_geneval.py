"""GenEval-style scorer: ground-truth renders score 1, mismatched scenes 0; prompt set determinism and hashing."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cheers_pl.data.synthetic import render, scene_from_spec
from cheers_pl.data.synthetic_scene import Scene, SceneObject, SyntheticConfig
from cheers_pl.eval.geneval import (
    CATEGORIES,
    GenEvalPrompt,
    evaluate_images,
    ground_truth_scene,
    load_prompts,
    make_prompts,
    prompts_hash,
    relation_holds,
    run_geneval,
    save_prompts,
    score_image,
)
from cheers_pl.eval.geneval_prompts import TINY_PER_CATEGORY, TINY_PROMPTS_FILE

CFG = SyntheticConfig()
ROOT = Path(__file__).resolve().parents[2]
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _prompts(category: str, n: int = 8) -> list[GenEvalPrompt]:
    return [p for p in make_prompts(CFG, n, seed=3) if p.category == category]


def _truth_image(prompt: GenEvalPrompt, seed: int = 0) -> np.ndarray:
    return render(ground_truth_scene(prompt, CFG, np.random.default_rng(seed)), CFG)


def _other(values: tuple[str, ...], *exclude: str | None) -> str:
    return next(v for v in values if v not in exclude)


def _mismatch(prompt: GenEvalPrompt, rng: np.random.Generator) -> list[np.ndarray]:
    """Renders of scenes that violate `prompt` in the ways GenEval checks."""
    objs = prompt.objects
    a = objs[0]
    scenes: list[Scene] = []
    if prompt.category == "single_object":  # the object is missing
        scenes.append(scene_from_spec([{"shape": _other(CFG.shapes, a["shape"]), "color": "red"}], CFG, rng))
    elif prompt.category == "two_objects":  # one of the two is missing
        for keep in objs:
            filler = _other(CFG.shapes, objs[0]["shape"], objs[1]["shape"])
            specs = [{"shape": keep["shape"], "color": "red"}, {"shape": filler, "color": "blue"}]
            scenes.append(scene_from_spec(specs, CFG, rng))
    elif prompt.category == "counting":  # one too few, one too many, right count of the wrong shape
        n, shape = a["count"], a["shape"]
        for k in (n - 1, n + 1):
            specs = [{"shape": shape, "color": "red", "size": "small"} for _ in range(k)]
            specs += [{"shape": _other(CFG.shapes, shape), "color": "blue", "size": "small"}] * (k == n - 1)
            scenes.append(scene_from_spec(specs, CFG, rng))
        other = _other(CFG.shapes, shape)
        scenes.append(scene_from_spec([{"shape": other, "color": "red", "size": "small"}] * n, CFG, rng))
    elif prompt.category == "colors":  # the object has the wrong colour
        specs = [{"shape": a["shape"], "color": _other(CFG.colors, a["color"])}]
        scenes.append(scene_from_spec(specs, CFG, rng))
    elif prompt.category == "position":  # swapped positions
        swapped = dataclasses.replace(prompt, relation=OPPOSITE[prompt.relation])
        scenes.append(ground_truth_scene(swapped, CFG, rng))
    else:  # color_attr: colours swapped between the two objects
        b = objs[1]
        specs = [{"shape": a["shape"], "color": b["color"]}, {"shape": b["shape"], "color": a["color"]}]
        scenes.append(scene_from_spec(specs, CFG, rng))
    return [render(s, CFG) for s in scenes]


@pytest.mark.parametrize("category", CATEGORIES)
def test_ground_truth_renders_score_one(category: str) -> None:
    prompts = _prompts(category)
    images = [_truth_image(p, seed) for p in prompts for seed in (0, 1)]
    scores = evaluate_images(images, [p for p in prompts for _ in (0, 1)], CFG)
    assert scores[category] == 1.0 and scores["overall"] == 1.0


@pytest.mark.parametrize("category", CATEGORIES)
def test_mismatched_scenes_score_zero(category: str) -> None:
    rng = np.random.default_rng(0)
    prompts = _prompts(category)
    pairs = [(img, p) for p in prompts for img in _mismatch(p, rng)]
    assert len(pairs) >= len(prompts)
    scores = evaluate_images([img for img, _ in pairs], [p for _, p in pairs], CFG)
    assert scores[category] == 0.0


def test_counting_ignores_other_shapes_and_position_needs_the_named_colours() -> None:
    rng = np.random.default_rng(5)
    count = GenEvalPrompt("c", "counting", "two objects: two circles", [{"shape": "circle", "color": None, "count": 2}])
    specs = [{"shape": "circle", "color": "red"}, {"shape": "circle", "color": "blue"}]
    specs.append({"shape": "square", "color": "red"})
    assert score_image(render(scene_from_spec(specs, CFG, rng), CFG), count, CFG)
    pos = make_prompts(CFG, 4, seed=0)[16]
    assert pos.category == "position"
    recoloured = ground_truth_scene(pos, CFG, rng)
    recoloured.objects[0].color = _other(CFG.colors, pos.objects[0]["color"], pos.objects[1]["color"])
    assert not score_image(render(recoloured, CFG), pos, CFG)


def test_relation_rule_uses_direction_with_genevals_margin() -> None:
    def obj(x: int, y: int) -> SceneObject:
        return SceneObject(shape="circle", color="red", size="small", x=x, y=y)

    assert relation_holds(obj(10, 30), obj(40, 32), "left of", CFG)
    assert not relation_holds(obj(10, 30), obj(40, 32), "above", CFG)
    assert relation_holds(obj(40, 32), obj(10, 30), "right of", CFG)
    assert relation_holds(obj(30, 50), obj(31, 10), "below", CFG)
    assert not relation_holds(obj(30, 30), obj(32, 31), "left of", CFG)  # within the margin: no relation
    assert not relation_holds(obj(30, 10), obj(40, 50), "left of", CFG)  # mainly vertical


def test_overall_is_the_mean_of_category_accuracies_and_groups_pool_images() -> None:
    prompts = make_prompts(CFG, 2, seed=1)
    wrong = {"counting_0000", "colors_0000", "colors_0001"}
    images = []
    for p in prompts:
        img = _truth_image(p)
        images.append(np.full_like(img, 240) if p.id in wrong else img)  # blank background: nothing present
    scores = evaluate_images(np.stack(images), prompts, CFG)
    expected = {c: 1.0 for c in CATEGORIES} | {"counting": 0.5, "colors": 0.0}
    assert {c: scores[c] for c in CATEGORIES} == expected
    assert scores["overall"] == pytest.approx(np.mean(list(expected.values())))
    held = [p for p in prompts if p.held_out]
    assert scores["held_out"] == pytest.approx(sum(p.id not in wrong for p in held) / len(held))
    assert sum(p.held_out == [] for p in prompts) + len(held) == len(prompts)


def test_prompts_are_deterministic_balanced_and_prefix_stable() -> None:
    big = make_prompts(CFG, 12, seed=0)
    assert big == make_prompts(CFG, 12, seed=0)
    assert [p.text for p in make_prompts(CFG, 12, seed=1)] != [p.text for p in big]
    small = make_prompts(CFG, 5, seed=0)
    assert small == [p for p in big if int(p.id.rsplit("_", 1)[1]) < 5]
    assert [sum(p.category == c for p in big) for c in CATEGORIES] == [12] * 6
    for p in big:
        pairs = [(o["color"], o["shape"]) for o in p.objects if o["color"] is not None]
        expected = [f"pair:{c}/{s}" for c, s in pairs if CFG.is_held_out_pair(c, s)]
        expected += [f"count:{o['count']}" for o in p.objects if p.category == "counting" and o["count"] == 4]
        assert p.held_out == expected
    for c in ("counting", "colors", "position", "color_attr"):  # held-out compositions alternate with the rest
        flags = [bool(p.held_out) for p in big if p.category == c][:4]
        assert flags == [False, True, False, True]
    assert {p.text for p in big if p.category == "single_object"} == {f"one object: one {s}" for s in CFG.shapes}


def test_prompts_file_roundtrip_and_committed_hash(tmp_path) -> None:
    prompts = make_prompts(CFG, TINY_PER_CATEGORY, seed=0)
    digest = save_prompts(prompts, tmp_path / "p.jsonl")
    assert load_prompts(tmp_path / "p.jsonl") == prompts
    committed = ROOT / TINY_PROMPTS_FILE
    assert load_prompts(committed) == prompts and prompts_hash(prompts) == digest
    assert digest == "74f7fe8b9aae37802ce320968f1d02b3cf77dfa77018c8a4207443a2e75ee20a"
    changed = [dataclasses.replace(prompts[0], text=prompts[0].text + " ")] + prompts[1:]
    assert prompts_hash(changed) != digest
    (tmp_path / "bad.jsonl").write_text(committed.read_text().splitlines()[0] + '\n{"id": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(tmp_path / "bad.jsonl")


def test_run_geneval_oracle_scores_one_and_records_protocol() -> None:
    prompts = make_prompts(CFG, 2, seed=0)
    by_text = {p.text: p for p in prompts}
    calls = []

    def oracle(texts: list[str], seed: int) -> torch.Tensor:
        calls.append((len(texts), seed))
        rng = np.random.default_rng(seed)
        images = [render(ground_truth_scene(by_text[t], CFG, rng), CFG) for t in texts]
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)

    out = run_geneval(oracle, prompts, CFG, images_per_prompt=2, seeds=(0, 1), batch_size=10, keep_images=3)
    assert out["scores"]["overall"] == 1.0
    assert calls == [(10, 0), (10, 1), (4, 2), (10, 100_003), (10, 100_004), (4, 100_005)]
    proto = out["protocol"]
    assert proto["num_images"] == 48 and proto["num_prompts"] == 12 and proto["seeds"] == [0, 1]
    assert proto["images_per_prompt"] == 2 and proto["prompts_hash"] == prompts_hash(prompts)
    assert len(out["images"]) == 3 and out["image_prompts"] == [prompts[0].text] * 2 + [prompts[1].text]
    calls.clear()
    shards = [run_geneval(oracle, prompts, CFG, 2, (0, 1), 10, rank=r, world_size=2) for r in (0, 1)]
    seeds_by_rank = sorted(s for _, s in calls)
    assert seeds_by_rank == [0, 1, 2, 100_003, 100_004, 100_005]  # same chunks, split over ranks
    for key, (correct, total) in out["counts"].items():
        assert sum(s["counts"][key][0] for s in shards) == correct
        assert sum(s["counts"][key][1] for s in shards) == total


def test_bad_arguments_raise_value_errors() -> None:
    with pytest.raises(ValueError, match="per_category"):
        make_prompts(CFG, 0)
    with pytest.raises(ValueError, match="max_objects"):
        make_prompts(SyntheticConfig(max_objects=1, held_out_counts=()), 2)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        evaluate_images(np.zeros((2, 64, 64, 3), np.uint8), make_prompts(CFG, 1)[:1], CFG)
    with pytest.raises(ValueError, match="uint8"):
        evaluate_images(torch.zeros(1, 3, 64, 64), make_prompts(CFG, 1)[:1], CFG)
    with pytest.raises(ValueError, match="relation"):
        GenEvalPrompt("x", "position", "t", [{"shape": "circle", "color": "red", "count": 1}] * 2)
