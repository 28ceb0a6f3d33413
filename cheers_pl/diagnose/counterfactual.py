"""Diagnosis 1g, does the LLM read the object a question names? Counterfactual edits of test scenes.

Accuracy beside a shortcut (`cheers_pl.eval.understanding.binding_scores`) says *whether* a model binds; an edit of
the scene says *which object* its answer comes from. For each colour, shape and texture question about one referred
object of a test scene with two or more objects, the same question is asked of three renders:
- original: the scene as generated;
- referred: the referred object's asked attribute set to a value no object of the scene has (for textures, of which
  there are four, a value the referred object lacks when every texture is present); the right answer is the new value;
- other: the same new value given to one other object instead (drawn uniformly); the right answer is unchanged.
"follows_referred" is the share of referred edits answered with the new value and "names_other" the share of other
edits answered with it. A model that reads the named object follows the first and ignores the second; one that names
the attribute of any object of the scene does both about equally often. The referring expression never uses the
asked attribute, so every edit keeps it naming exactly the same object.

Shape legend: B questions, H/W image side.
"""

import dataclasses
import random
from collections import Counter
from typing import Any

import torch
from PIL import Image

from cheers_pl.data.processing import understanding_transform
from cheers_pl.data.synthetic import make_sample
from cheers_pl.data.synthetic_render import render
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.data.synthetic_text import ATTRIBUTE_QUESTIONS, attribute_answer, attribute_question
from cheers_pl.eval.vqa import normalize_answer

EDITS = ("original", "referred", "other")


def counterfactual_items(cfg: SyntheticConfig, per_category: int, seed: int = 0) -> list[dict]:
    """Up to `per_category` referred-object questions per attribute from the test split, each with its three scenes.

    Returns:
        [{"category", "question", "scenes": {edit: Scene}, "answers": {edit: expected answer}, "other_value"}].
    """
    rng = random.Random(seed)
    values = {"color": cfg.colors, "shape": cfg.shapes, "texture": cfg.textures}
    out: list[dict] = []
    counts = dict.fromkeys(ATTRIBUTE_QUESTIONS, 0)
    index = 0
    while min(counts.values()) < per_category and index < 100 * per_category:
        sample = make_sample(index, "test", cfg)
        index += 1
        scene = Scene.from_json(sample["json"]["scene"])
        if len(scene.objects) < 2:
            continue
        asked = {q["question"] for q in sample["json"]["qa"]}
        for attribute in ATTRIBUTE_QUESTIONS:
            if counts[attribute] >= per_category:
                continue
            for k, obj in enumerate(scene.objects):
                question = attribute_question(obj, scene, attribute)
                if question is None or question not in asked:
                    continue
                present = {getattr(o, attribute) for o in scene.objects}
                fresh = [v for v in values[attribute] if v not in present]
                new = rng.choice(fresh or [v for v in values[attribute] if v != getattr(obj, attribute)])
                other = rng.choice([j for j in range(len(scene.objects)) if j != k])
                edited = {}
                for edit, target in (("referred", k), ("other", other)):
                    objects = list(scene.objects)
                    objects[target] = dataclasses.replace(objects[target], **{attribute: new})
                    edited[edit] = Scene(objects, scene.image_size)
                new_answer = attribute_answer(edited["referred"].objects[k], attribute)
                answer = attribute_answer(obj, attribute)
                out.append({
                    "category": attribute, "question": question,
                    "scenes": {"original": scene, **edited},
                    "answers": {"original": answer, "referred": new_answer, "other": answer},
                    "other_value": new_answer,
                })  # fmt: skip
                counts[attribute] += 1
                break
    return out


def run_counterfactual(stage: Any, cfg: SyntheticConfig, per_category: int = 50, batch_size: int = 32) -> dict:
    """1g: accuracy on each render, "follows_referred" and "names_other" per attribute (see the module docstring).

    Returns:
        {attribute: {"questions", "original", "follows_referred", "keeps_under_other", "names_other"},
         "protocol": {"per_category", "edits", "image_size"}}.
    """
    items = counterfactual_items(cfg, per_category)
    size = stage.cfg.data.image_size
    jobs = [(it, edit) for it in items for edit in EDITS]
    device = next(stage.parameters()).device
    preds: list[str] = []
    stage.eval()
    with torch.no_grad():
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start : start + batch_size]
            images_B3HW = torch.stack([
                understanding_transform(Image.fromarray(render(it["scenes"][edit], cfg)), size) for it, edit in chunk
            ])  # fmt: skip
            preds += stage.answer(images_B3HW.to(device), [it["question"] for it, _ in chunk], max_new_tokens=8)
    tallies: dict[str, Counter] = {}
    for (it, edit), pred in zip(jobs, preds, strict=True):
        guess, tally = normalize_answer(pred), tallies.setdefault(it["category"], Counter())
        tally[edit] += guess == normalize_answer(it["answers"][edit])
        tally["names_other"] += edit == "other" and guess == normalize_answer(it["other_value"])
        tally["questions"] += edit == "original"
    out: dict[str, Any] = {
        category: {
            "questions": t["questions"],
            "original": t["original"] / t["questions"],
            "follows_referred": t["referred"] / t["questions"],
            "keeps_under_other": t["other"] / t["questions"],
            "names_other": t["names_other"] / t["questions"],
        }
        for category, t in tallies.items()
    }
    out["protocol"] = {"per_category": per_category, "edits": list(EDITS), "image_size": size}
    return out
