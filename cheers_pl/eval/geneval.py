"""GenEval-style detector-free generation scorer on the synthetic world.

Each generated image is parsed analytically (`cheers_pl.eval.scene_parser.parse_scene`) and checked against its
prompt's spec (`cheers_pl.eval.geneval_prompts`) with GenEval's rules, the detector replaced by the parser:
- an object *matches* a spec entry when its shape equals the entry's shape and, when the entry names a colour,
  its colour equals it;
- single_object / two_objects / colors / color_attr: every entry has at least `count` matching objects;
- counting: exactly `count` matching objects (GenEval also excludes count + 1);
- position: both entries present and some matching pair satisfies the relation, judged as GenEval does from
  the centres: the centre offset, shrunk on each axis by `POSITION_THRESHOLD` × the summed box extents, must point
  mainly along the asked direction (normalised component beyond 0.5).
Scores are accuracies per category; `overall` is the mean of the category accuracies (as GenEval), and
`held_out` / `in_distribution` pool the images whose prompt does / does not use a held-out composition.

References:
    Ghosh et al., "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment", 2023.

Legend: N images, H/W image size.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from cheers_pl.data.synthetic import scene_from_spec
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.eval.geneval_prompts import (
    CATEGORIES,
    GenEvalPrompt,
    load_prompts,
    make_prompts,
    prompts_hash,
    save_prompts,
)
from cheers_pl.eval.scene_parser import parse_scene

__all__ = [
    "CATEGORIES",
    "GROUPS",
    "GenEvalPrompt",
    "accuracies",
    "count_correct",
    "evaluate_images",
    "ground_truth_scene",
    "load_prompts",
    "make_prompts",
    "prompts_hash",
    "relation_holds",
    "run_geneval",
    "save_prompts",
    "score_image",
    "score_objects",
]

POSITION_THRESHOLD = 0.1  # GenEval's position margin, as a fraction of the two boxes' summed extents
GROUPS: tuple[str, ...] = ("held_out", "in_distribution")  # pooled over categories
SEED_STRIDE = 100_003  # chunk i of seed s is generated with seed s * SEED_STRIDE + i
_REGIONS = {"left of": ("left", "right"), "right of": ("right", "left"), "above": ("top", "bottom")}
_REGIONS["below"] = ("bottom", "top")
_GROUND_TRUTH_TRIES = 50


class _Object(Protocol):
    shape: str
    color: str
    size: str
    x: float
    y: float


def _matches(obj: _Object, spec: dict) -> bool:
    return obj.shape == spec["shape"] and (spec["color"] is None or obj.color == spec["color"])


def relation_holds(a: _Object, b: _Object, relation: str, cfg: SyntheticConfig) -> bool:
    """Whether `a` is `relation` ("left of", "right of", "above", "below") `b`, by GenEval's centre rule."""
    offset = np.array([a.x - b.x, a.y - b.y], dtype=np.float64)
    norm = float(np.hypot(*offset))
    extent = (2 * cfg.radius(a.size) + 1) + (2 * cfg.radius(b.size) + 1)
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - POSITION_THRESHOLD * extent, 0.0)
    if norm == 0.0 or np.all(np.abs(shrunk) < 1e-3):
        return False
    dx, dy = shrunk / norm
    return {"left of": dx < -0.5, "right of": dx > 0.5, "above": dy < -0.5, "below": dy > 0.5}[relation]


def score_objects(objects: Sequence[_Object], prompt: GenEvalPrompt, cfg: SyntheticConfig) -> bool:
    """Whether the objects (parsed, or a true scene's) satisfy the prompt (module docstring rules)."""
    groups = [[o for o in objects if _matches(o, spec)] for spec in prompt.objects]
    if prompt.category == "counting":
        return all(len(g) == spec["count"] for g, spec in zip(groups, prompt.objects, strict=True))
    if not all(len(g) >= spec["count"] for g, spec in zip(groups, prompt.objects, strict=True)):
        return False
    if prompt.relation is None:
        return True
    return any(relation_holds(a, b, prompt.relation, cfg) for a in groups[0] for b in groups[1] if a is not b)


def score_image(image_HW3: np.ndarray, prompt: GenEvalPrompt, cfg: SyntheticConfig) -> bool:
    """Parses a uint8 H×W×3 image and scores it against `prompt`."""
    return score_objects(parse_scene(image_HW3, cfg), prompt, cfg)


def ground_truth_scene(prompt: GenEvalPrompt, cfg: SyntheticConfig, rng: np.random.Generator) -> Scene:
    """A scene that satisfies `prompt` exactly (its objects only; unnamed colours drawn from `cfg.colors`).

    Position prompts place the two objects in opposite regions and redraw until GenEval's rule holds.
    """
    for _ in range(_GROUND_TRUTH_TRIES):
        specs = []
        for k, obj in enumerate(prompt.objects):
            for _ in range(obj["count"]):
                spec = {"shape": obj["shape"], "color": obj["color"] or str(rng.choice(cfg.colors))}
                if prompt.relation is not None:
                    spec["region"] = _REGIONS[prompt.relation][k]
                specs.append(spec)
        scene = scene_from_spec(specs, cfg, rng)
        if score_objects(scene.objects, prompt, cfg):
            return scene
    raise ValueError(f"could not build a scene satisfying prompt {prompt.id!r} ({prompt.text!r})")


def _group_of(prompt: GenEvalPrompt) -> str:
    return GROUPS[0] if prompt.held_out else GROUPS[1]


def count_correct(correct: Sequence[bool], prompts: Sequence[GenEvalPrompt]) -> dict[str, list[int]]:
    """[num_correct, num_total] for every category and group (fixed keys, zeros where absent)."""
    counts = {key: [0, 0] for key in (*CATEGORIES, *GROUPS)}
    for ok, prompt in zip(correct, prompts, strict=True):
        for key in (prompt.category, _group_of(prompt)):
            counts[key][0] += int(ok)
            counts[key][1] += 1
    return counts


def accuracies(counts: dict[str, Sequence[int]]) -> dict[str, float]:
    """Accuracy of every key with images, plus `overall` = mean over the categories that have images."""
    scores = {key: correct / total for key, (correct, total) in counts.items() if total > 0}
    present = [scores[c] for c in CATEGORIES if c in scores]
    scores["overall"] = sum(present) / len(present) if present else math.nan
    return scores


def as_hwc_uint8(images: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Images as a list of uint8 H×W×3 arrays, from N×3×H×W tensors, N×H×W×3 arrays or lists of H×W×3 arrays."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8 N×3×H×W, got {images.dtype} {tuple(images.shape)}")
        images = images.permute(0, 2, 3, 1).cpu().numpy()
    out = [np.asarray(img) for img in images]
    for img in out:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"images must be uint8 H×W×3 arrays, got {img.dtype} {img.shape}")
    return out


def evaluate_images(
    images: torch.Tensor | np.ndarray | Sequence[np.ndarray], prompts: Sequence[GenEvalPrompt], cfg: SyntheticConfig
) -> dict[str, float]:
    """Scores images (one per entry of `prompts`; repeat a prompt for several images) → `accuracies` dict."""
    arrays = as_hwc_uint8(images)
    if len(arrays) != len(prompts):
        raise ValueError(f"got {len(arrays)} images for {len(prompts)} prompts; pass one prompt per image")
    return accuracies(count_correct([score_image(a, p, cfg) for a, p in zip(arrays, prompts, strict=True)], prompts))


def run_geneval(
    generate_fn: Callable[[list[str], int], Any],
    prompts: Sequence[GenEvalPrompt],
    cfg: SyntheticConfig,
    images_per_prompt: int = 1,
    seeds: Sequence[int] = (0,),
    batch_size: int = 16,
    rank: int = 0,
    world_size: int = 1,
    keep_images: int = 0,
) -> dict[str, Any]:
    """Generates and scores `images_per_prompt` × len(seeds) images per prompt.

    For each seed s, the prompt list with every prompt repeated `images_per_prompt` times is cut into chunks of
    `batch_size`; chunk i is generated by `generate_fn(texts, s * SEED_STRIDE + i)`, which returns uint8 images
    (N×3×H×W tensor or N×H×W×3 array). Under data parallelism rank r takes the chunks whose running index is r
    modulo `world_size`, so the images do not depend on the number of ranks; sum `counts` over ranks.

    Returns:
        {"scores": this rank's `accuracies`, "counts": `count_correct` of this rank, "protocol": {num_prompts,
        images_per_prompt, seeds, batch_size, num_images (this rank), prompts_hash, seed_rule}, "images": the
        first `keep_images` images (uint8 H×W×3) and "image_prompts": their prompt texts}.
    """
    if images_per_prompt < 1 or batch_size < 1 or not seeds:
        raise ValueError(
            f"need images_per_prompt >= 1, batch_size >= 1 and at least one seed, got {images_per_prompt}, "
            f"{batch_size}, {list(seeds)}"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    expanded = [p for p in prompts for _ in range(images_per_prompt)]
    done_prompts: list[GenEvalPrompt] = []
    correct: list[bool] = []
    kept: list[np.ndarray] = []
    chunk_index = 0
    for seed in seeds:
        for i, start in enumerate(range(0, len(expanded), batch_size)):
            chunk_index += 1
            if (chunk_index - 1) % world_size != rank:
                continue
            chunk = expanded[start : start + batch_size]
            arrays = as_hwc_uint8(generate_fn([p.text for p in chunk], seed * SEED_STRIDE + i))
            if len(arrays) != len(chunk):
                raise ValueError(f"generate_fn returned {len(arrays)} images for {len(chunk)} prompts")
            kept += arrays[: max(keep_images - len(kept), 0)]
            correct += [score_image(a, p, cfg) for a, p in zip(arrays, chunk, strict=True)]
            done_prompts += chunk
    counts = count_correct(correct, done_prompts)
    protocol = {
        "num_prompts": len(prompts),
        "images_per_prompt": images_per_prompt,
        "seeds": [int(s) for s in seeds],
        "batch_size": batch_size,
        "num_images": len(correct),
        "prompts_hash": prompts_hash(list(prompts)),
        "seed_rule": f"chunk i of seed s uses seed s * {SEED_STRIDE} + i",
    }
    return {
        "scores": accuracies(counts),
        "counts": counts,
        "protocol": protocol,
        "images": kept,
        "image_prompts": [p.text for p in done_prompts[: len(kept)]],
    }
