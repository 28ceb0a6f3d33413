"""Understanding accuracy as a metric: normalised exact match per question category, MMBench-style.

Answers are compared after `normalize_answer` (lower-case, punctuation removed, whitespace collapsed); categories
are count, color, shape, relation, texture, digit, and any other is pooled as "other"; `overall` is over all
questions. The validation callback (`cheers_pl.callbacks.vqa`) and the evaluate command
(`cheers_pl.eval.understanding`) both score with these functions.

References:
    Liu et al., "MMBench: Is Your Multi-modal Model an All-around Player?", 2023 (per-category exact match).
"""

import string
from collections.abc import Sequence

VQA_CATEGORIES: tuple[str, ...] = ("count", "color", "shape", "relation", "texture", "digit", "other")
EXCLUDED_CATEGORIES: tuple[str, ...] = ("caption",)
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, punctuation removed, whitespace stripped and collapsed: ' Three.' -> 'three'."""
    return " ".join(str(text).lower().translate(_PUNCTUATION).split())


def _bucket(category: str) -> str:
    return category if category in VQA_CATEGORIES else "other"


def exact_match_counts(preds: Sequence[str], answers: Sequence[str], categories: Sequence[str]) -> dict[str, list[int]]:
    """[num_correct, num_total] per category of `VQA_CATEGORIES` (fixed keys; unknown categories -> "other")."""
    if not len(preds) == len(answers) == len(categories):
        raise ValueError(
            f"need as many preds, answers and categories, got {len(preds)}, {len(answers)}, {len(categories)}"
        )
    counts = {c: [0, 0] for c in VQA_CATEGORIES}
    for pred, answer, category in zip(preds, answers, categories, strict=True):
        entry = counts[_bucket(category)]
        entry[0] += int(normalize_answer(pred) == normalize_answer(answer))
        entry[1] += 1
    return counts


def accuracies_from_counts(counts: dict[str, Sequence[int]]) -> dict[str, float]:
    """Accuracy of every category with questions plus `overall` over all questions (absent when there are none)."""
    scores = {c: correct / total for c, (correct, total) in counts.items() if total > 0}
    total = sum(t for _, t in counts.values())
    if total:
        scores["overall"] = sum(c for c, _ in counts.values()) / total
    return scores


def exact_match_by_category(
    preds: Sequence[str], answers: Sequence[str], categories: Sequence[str]
) -> dict[str, float]:
    """Normalised exact-match accuracy per category and `overall` (over all questions)."""
    return accuracies_from_counts(exact_match_counts(preds, answers, categories))
