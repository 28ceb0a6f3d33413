"""Understanding evaluation: exact-match VQA on every question of a held-out split (DESIGN.md §5).

Unlike the validation callback, which sees one question drawn per streamed example, the evaluate command reads the
raw shard samples of a split and asks *every* question-answer pair in their metadata (`meta["qa"]`, categories
count, color, shape, relation, texture, digit), in shard order, up to `max_questions`. Images go through the
understanding transform the model was trained with. Scores are the normalised exact match (`cheers_pl.eval.vqa`)
per category and `overall` over all questions (MMBench-style), plus `held_out` / `in_distribution`: questions about
scenes built around a held-out composition (`meta["held_out"]` non-empty: an unseen colour-shape pair or object
count) vs the rest.

Binding (`binding_scores`): a question about one referred object's colour, shape or texture can be answered without
finding that object, by naming the attribute of any object in the scene. Where the split's metadata holds the scene
(`meta["scene"]["objects"]`), the section also reports, per such category and by the scene's object count, the
accuracy beside that shortcut's expected accuracy (the share of the scene's objects that carry the asked value,
averaged over the questions) and how many wrong answers still name a value present in the scene. Accuracy at the
shortcut's level with every wrong answer present in the scene means the model reads the scene's attributes but does
not bind them to the referred object. A second shortcut names the scene's most frequent value (ties drawn
uniformly): where values repeat within a scene (textures: most objects are solid) it beats the any-object shortcut
without binding either, so the table gives its expected accuracy and the share of answers that name it.

References:
    Liu et al., "MMBench: Is Your Multi-modal Model an All-around Player?", 2023 (per-category exact match).

Legend: B questions, H/W image side.
"""

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from cheers_pl.data.processing import decode_image, understanding_transform
from cheers_pl.data.synthetic_text import TEXTURE_ADJ
from cheers_pl.data.tasks import parse_raw
from cheers_pl.data.webdataset import EventCounter, SkipSample, raw_samples, resolve_shards
from cheers_pl.eval.vqa import accuracies_from_counts, exact_match_counts, normalize_answer

GROUPS: tuple[str, ...] = ("held_out", "in_distribution")
# the attribute questions `binding_scores` reads: category -> (the scene object's key it asks about, the answer word of
# each value where the two differ, e.g. texture "stripes" is answered "striped")
BINDING_ATTRIBUTES: dict[str, tuple[str, dict[str, str]]] = {
    "color": ("color", {}),
    "shape": ("shape", {}),
    "texture": ("texture", TEXTURE_ADJ),
}
AnswerFn = Callable[[torch.Tensor, list[str]], list[str]]


@dataclass
class VQAItem:
    """One question about one image (the image tensor is shared by the questions of a sample)."""

    key: str
    image: torch.Tensor  # 3×H×W in [-1, 1]
    question: str
    answer: str
    category: str
    held_out: bool
    objects: tuple[dict, ...] = ()  # the scene's objects (`meta["scene"]["objects"]`), when the metadata has them


def load_vqa_items(shards: str, image_size: int, max_questions: int) -> tuple[list[VQAItem], dict[str, int], int]:
    """Every QA pair of the split's samples, in shard order, up to `max_questions`.

    Args:
        shards: shard spec (glob / brace / `::`-joined list) of the split.
        image_size: the model's image side (understanding transform: resize the longer side, pad).
        max_questions: stop after this many questions.

    Returns:
        (items, bad-sample counts by reason, number of samples read).
    """
    if max_questions < 1:
        raise ValueError(f"max_vqa must be >= 1, got {max_questions}")
    counter = EventCounter()
    items: list[VQAItem] = []
    num_samples = 0
    stream = raw_samples(resolve_shards(shards), counter, rank=0, world_size=1, resampled=False, seed=0)
    for raw in stream:
        try:
            image_bytes, _, meta = parse_raw(raw)
            img, _ = decode_image(image_bytes)
        except (SkipSample, ValueError) as err:
            counter.add(f"skip/{getattr(err, 'reason', 'undecodable_image')}", str(err)[:300])
            continue
        num_samples += 1
        image = understanding_transform(img, image_size)
        held_out = bool(meta.get("held_out"))
        scene = meta.get("scene")
        objects = tuple(o for o in scene.get("objects", ()) if isinstance(o, dict)) if isinstance(scene, dict) else ()
        for qa in meta.get("qa", []):
            if not (isinstance(qa, dict) and "question" in qa and "answer" in qa):
                continue
            category = str(qa.get("category", "other"))
            key = raw.get("__key__", "?")
            items.append(VQAItem(key, image, str(qa["question"]), str(qa["answer"]), category, held_out, objects))
            if len(items) >= max_questions:
                return items, dict(counter.total), num_samples
    return items, dict(counter.total), num_samples


def group_counts(correct: Sequence[bool], items: Sequence[VQAItem]) -> dict[str, list[int]]:
    """[num_correct, num_total] of the held-out and in-distribution questions."""
    counts = {g: [0, 0] for g in GROUPS}
    for ok, item in zip(correct, items, strict=True):
        entry = counts[GROUPS[0] if item.held_out else GROUPS[1]]
        entry[0] += int(ok)
        entry[1] += 1
    return counts


def binding_scores(preds: Sequence[str], items: Sequence[VQAItem]) -> dict[str, dict[str, dict[str, float | int]]]:
    """Attribute questions by category and scene object count: accuracy against the any-object shortcut.

    Returns:
        {category: {"n=K" | "all": {"questions", "accuracy", "any_object", "scene_majority", "says_majority",
        "wrong", "wrong_present"}}} for the `BINDING_ATTRIBUTES` categories with at least one item that carries its
        scene's objects. "any_object" is the expected accuracy of naming the attribute of a uniformly drawn object of
        the scene; "scene_majority" that of naming the scene's most frequent value (one of the tied ones, uniformly);
        "says_majority" the share of answers that name a most frequent value; "wrong_present" counts the wrong
        answers that name a value some object of the scene has.
    """
    if len(preds) != len(items):
        raise ValueError(f"need one prediction per item, got {len(preds)} for {len(items)}")
    sums: dict[str, dict[str, list[float]]] = {}
    for pred, item in zip(preds, items, strict=True):
        if item.category not in BINDING_ATTRIBUTES or not item.objects:
            continue
        key, words = BINDING_ATTRIBUTES[item.category]
        present = [normalize_answer(words.get(str(o.get(key)), str(o.get(key)))) for o in item.objects]
        answer, guess = normalize_answer(item.answer), normalize_answer(pred)
        ok = guess == answer
        counts = Counter(present)
        tied = {v for v, c in counts.items() if c == max(counts.values())}
        row = [1.0, float(ok), present.count(answer) / len(present), (answer in tied) / len(tied), float(guess in tied),
               float(not ok), float(not ok and guess in present)]  # fmt: skip
        for group in (f"n={len(present)}", "all"):
            acc = sums.setdefault(item.category, {}).setdefault(group, [0.0] * len(row))
            acc[:] = [a + r for a, r in zip(acc, row, strict=True)]
    out: dict[str, dict[str, dict[str, float | int]]] = {}
    for category, groups in sums.items():
        ordered = sorted(groups, key=lambda g: (g == "all", int(g[2:]) if g != "all" else 0))
        out[category] = {
            g: {
                "questions": int(groups[g][0]),
                "accuracy": groups[g][1] / groups[g][0],
                "any_object": groups[g][2] / groups[g][0],
                "scene_majority": groups[g][3] / groups[g][0],
                "says_majority": groups[g][4] / groups[g][0],
                "wrong": int(groups[g][5]),
                "wrong_present": int(groups[g][6]),
            }
            for g in ordered
        }
    return out


def run_vqa(
    answer_fn: AnswerFn, items: Sequence[VQAItem], batch_size: int = 32, num_examples: int = 12
) -> dict[str, Any]:
    """Answers every item with `answer_fn(images B×3×H×W, questions) -> answers` and scores them.

    Returns:
        {"scores": per-category + overall + held_out/in_distribution accuracies, "counts": [correct, total] per
        key, "examples": the first `num_examples` (question, answer, prediction, category, correct)}, and
        "binding" (`binding_scores`) when some attribute question carries its scene's objects.
    """
    if not items:
        raise ValueError("run_vqa: no questions to answer (the split has no QA metadata?)")
    preds: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        out = answer_fn(torch.stack([i.image for i in chunk]), [i.question for i in chunk])
        if len(out) != len(chunk):
            raise ValueError(f"answer returned {len(out)} answers for {len(chunk)} questions")
        preds += [str(p) for p in out]
    answers, categories = [i.answer for i in items], [i.category for i in items]
    correct = [normalize_answer(p) == normalize_answer(a) for p, a in zip(preds, answers, strict=True)]
    counts = {**exact_match_counts(preds, answers, categories), **group_counts(correct, items)}
    category_counts = {k: v for k, v in counts.items() if k not in GROUPS}
    counts["overall"] = [sum(correct), len(correct)]
    scores = accuracies_from_counts(category_counts)
    scores.update({g: c / t for g, (c, t) in counts.items() if g in GROUPS and t > 0})
    examples = [
        {"question": i.question, "answer": i.answer, "prediction": p, "category": i.category, "correct": ok}
        for i, p, ok in list(zip(items, preds, correct, strict=True))[:num_examples]
    ]
    section = {"scores": scores, "counts": counts, "examples": examples}
    if binding := binding_scores(preds, items):
        section["binding"] = binding
    return section
