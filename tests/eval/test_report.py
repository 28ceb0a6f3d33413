"""Tests of the report writer and of the VQA / generation-grid pieces it renders."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.eval.generation import tile, write_category_grids
from cheers_pl.eval.geneval_prompts import make_prompts
from cheers_pl.eval.report import PROTOCOL_KEYS, SECTIONS, render_markdown, sha256_file, write_report
from cheers_pl.eval.understanding import VQAItem, binding_scores, run_vqa


def _report() -> dict:
    protocol = {k: f"<{k}>" for k in PROTOCOL_KEYS}
    return {
        "protocol": {**protocol, "seeds": [0, 1], "guidance_scale": 3.0},
        "generation": {
            "scores": {"counting": 0.5, "overall": 0.25},
            "counts": {"counting": [1, 2]},
            "protocol": {"prompts_file_sha256": "abc123", "num_steps": 4, "alpha": 0.5},
            "grids": {"counting": {"file": "samples_counting.png", "prompts": ["three objects: three circles"]}},
        },
        "understanding": {"skipped": "stage 'tokenizer' has no answer"},
        "reconstruction": {
            "synthetic": {"vae": {"psnr": 31.25, "ssim": 0.9, "detail_error": 0.2}},
            "synthetic_parser": {
                "vae": dict.fromkeys(["shape", "color", "texture", "digit_objects", "count", "all"], 0.97)
            },
            "protocol": {"split": "test"},
        },
        "retrieval": {"scores": {"top1": 0.8125, "chance": 1 / 32, "num_groups": 8, "num_candidates": 32}},
        "distribution": {"fid": {"value": 12.5, "protocol": {"feature": "semantic"}}, "clip_score": {"skipped": "x"}},
    }


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 5000
    path.write_bytes(data)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_markdown_renders_numbers_protocols_and_skips() -> None:
    md = render_markdown(_report())
    for text in (
        "abc123",
        "| counting | 0.5000 | 1/2 |",
        "31.2500",
        "Skipped: stage 'tokenizer' has no answer",
        "fid: **12.5000**",
        "clip_score: skipped — x",
        "feature: `semantic`",
        "![counting](samples_counting.png)",
        "seeds: `0, 1`",
        "<checkpoint_sha256>",
    ):
        assert text in md, text


def test_write_report_json_md_and_manifest(tmp_path: Path) -> None:
    (tmp_path / "samples_counting.png").write_bytes(b"png")
    paths = write_report(_report(), tmp_path)
    assert json.loads(paths["report_json"].read_text()) == _report()
    manifest = json.loads(paths["manifest"].read_text())
    assert set(manifest["files"]) == {"report.json", "report.md", "samples_counting.png"}
    assert manifest["files"]["samples_counting.png"] == {"bytes": 3, "sha256": hashlib.sha256(b"png").hexdigest()}
    assert manifest["protocol"] == {k: f"<{k}>" for k in PROTOCOL_KEYS}
    markdown = paths["report_md"].read_text()
    assert "top-1 among 32: **0.8125**" in markdown and "| vae | 0.9700 |" in markdown


@pytest.mark.parametrize("drop", ["checkpoint_sha256", "split", *SECTIONS])
def test_write_report_rejects_a_missing_field(tmp_path: Path, drop: str) -> None:
    report = _report()
    report["protocol"].pop(drop, None)
    report.pop(drop, None)
    with pytest.raises(ValueError, match=drop):
        write_report(report, tmp_path)


def _items() -> list[VQAItem]:
    img = torch.zeros(3, 8, 8)
    rows = [("count", "three", True), ("count", "two", False), ("color", "red", True), ("digit", "7", False)]
    return [VQAItem(f"k{i}", img, f"q{i}?", a, c, h) for i, (c, a, h) in enumerate(rows)]


def test_run_vqa_scores_per_category_group_and_overall() -> None:
    items = _items()
    oracle = run_vqa(lambda images, qs: [items[int(q[1:-1])].answer.upper() + "." for q in qs], items, batch_size=3)
    assert oracle["scores"] == {
        "count": 1.0,
        "color": 1.0,
        "digit": 1.0,
        "overall": 1.0,
        "held_out": 1.0,
        "in_distribution": 1.0,
    }
    three = run_vqa(lambda images, qs: ["three"] * len(qs), items, batch_size=2)
    assert three["scores"]["count"] == 0.5 and three["scores"]["color"] == 0.0 and three["scores"]["overall"] == 0.25
    assert three["scores"]["held_out"] == 0.5 and three["scores"]["in_distribution"] == 0.0
    assert three["counts"]["overall"] == [1, 4] and three["examples"][0]["correct"] is True
    with pytest.raises(ValueError, match="answers"):
        run_vqa(lambda images, qs: ["x"], items, batch_size=2)


def _obj(color: str, shape: str, texture: str = "solid") -> dict:
    return {"color": color, "shape": shape, "texture": texture}


def test_binding_scores_set_accuracy_beside_the_any_object_shortcut() -> None:
    img = torch.zeros(3, 8, 8)
    two = (_obj("red", "circle"), _obj("blue", "square", "stripes"))
    three = (_obj("red", "circle"), _obj("red", "square"), _obj("green", "triangle", "dots"))
    items = [
        VQAItem("a", img, "what color is the circle?", "red", "color", False, two),
        VQAItem("a", img, "what color is the square?", "blue", "color", False, two),
        VQAItem("b", img, "what color is the square?", "red", "color", False, three),
        VQAItem("b", img, "what texture does the triangle have?", "dotted", "texture", False, three),
        VQAItem("b", img, "how many objects are there?", "three", "count", False, three),  # not an attribute
        VQAItem("c", img, "what color is the circle?", "red", "color", False),  # no scene: left out
    ]
    # a model that always names the first object's colour, and a texture present in the scene under its adjective
    preds = ["red", "red", "red", "striped", "three", "red"]
    out = binding_scores(preds, items)
    assert set(out) == {"color", "texture"}
    assert list(out["color"]) == ["n=2", "n=3", "all"]
    assert out["color"]["n=2"] == {"questions": 2, "accuracy": 0.5, "any_object": 0.5, "scene_majority": 0.5,
                                   "says_majority": 1.0, "wrong": 1, "wrong_present": 1}  # fmt: skip
    assert out["color"]["n=3"]["any_object"] == pytest.approx(2 / 3) and out["color"]["n=3"]["accuracy"] == 1.0
    # scene b holds two red objects: naming its majority colour answers "what color is the square?" right
    assert out["color"]["n=3"]["scene_majority"] == 1.0 and out["color"]["n=3"]["says_majority"] == 1.0
    assert out["color"]["all"]["questions"] == 3 and out["color"]["all"]["any_object"] == pytest.approx(5 / 9)
    # "striped" is the adjective of a texture no object of scene b has: wrong, and not present
    texture = out["texture"]["n=3"]
    assert texture == {"questions": 1, "accuracy": 0.0, "any_object": 1 / 3, "scene_majority": 0.0,
                       "says_majority": 0.0, "wrong": 1, "wrong_present": 0}  # fmt: skip
    section = run_vqa(lambda images, qs: preds[: len(qs)], items[:3], batch_size=8)
    assert section["binding"]["color"]["all"]["accuracy"] == pytest.approx(2 / 3)
    assert "binding" not in run_vqa(lambda images, qs: ["x"] * len(qs), _items(), batch_size=8)
    assert "| color | n=3 | 1 | 1.0000 |" in render_markdown({**_report(), "understanding": section})
    with pytest.raises(ValueError, match="one prediction per item"):
        binding_scores(["red"], items)


def test_category_grids_follow_the_generation_order(tmp_path: Path) -> None:
    prompts = make_prompts(SyntheticConfig(), 1)[:2]
    k, num_seeds = 2, 2
    # image value = its generation index (seed-major, then prompt, then image)
    images = [np.full((4, 4, 3), i, dtype=np.uint8) for i in range(len(prompts) * k * num_seeds)]
    grids = write_category_grids(images, prompts, k, num_seeds, tmp_path)
    assert list(grids) == [prompts[0].category, prompts[1].category]
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / grids[prompts[1].category]["file"]))
    assert grid.shape == (4 + 4, 4 * (4 + 2) + 2, 3)
    cells = [int(grid[2, 2 + j * 6, 0]) for j in range(4)]
    assert cells == [2, 3, 6, 7]  # prompt 1: seed 0 images 2, 3 then seed 1 images 6, 7
    with pytest.raises(ValueError, match="expected"):
        write_category_grids(images[:-1], prompts, k, num_seeds, tmp_path)
    assert tile([[images[0]], [images[1], images[2]]]).shape == (2 * 6 + 2, 2 * 6 + 2, 3)
