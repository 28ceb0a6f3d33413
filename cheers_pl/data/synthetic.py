"""Synthetic compositional world: seeded scene sampling, held-out splits and dataset samples.

The offline training set of the tiny preset and the ground truth of the detector-free evaluation
(DESIGN.md §4-5). A sample is fully determined by (cfg.seed, split, index), so any sample can be regenerated
alone and data-loader workers can produce disjoint index ranges.

Splits:
- "train" never contains a held-out colour-shape pair (`cfg.held_out_pairs`) nor a held-out object count
  (`cfg.held_out_counts`).
- "val" / "test": a fraction `cfg.eval_held_out_prob` (default 0.5) of scenes is built around exactly one
  held-out factor, chosen uniformly among the configured kinds: either a held-out count (all objects
  in-distribution) or one object with a held-out pair (count in-distribution). The rest are in-distribution
  scenes drawn like train. `held_out_factors` lists the factors of any scene.

Placement: objects are placed largest first by rejection sampling so that bounding boxes keep `cfg.margin`
pixels from each other and from the image border.

This module is the public entry point: it re-exports the scene types, `render`, `captions` and `questions`.
"""

import numpy as np

from cheers_pl.data.synthetic_render import render
from cheers_pl.data.synthetic_scene import (
    KNOWN_SHAPES,
    KNOWN_TEXTURES,
    PALETTE,
    REGIONS,
    SIZE_RADIUS_FRAC,
    SPLITS,
    Scene,
    SceneObject,
    SyntheticConfig,
    grid_cell,
    region_cell,
)
from cheers_pl.data.synthetic_text import captions, questions

__all__ = [
    "Scene",
    "SceneObject",
    "SyntheticConfig",
    "captions",
    "held_out_factors",
    "make_sample",
    "questions",
    "render",
    "sample_rng",
    "sample_scene",
    "scene_from_spec",
]

_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_TRIES_PER_OBJECT = 100
_RESTARTS = 200
_SPEC_KEYS = {"color", "shape", "size", "texture", "digit", "region"}


def sample_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The generator of sample `index` of `split`, seeded from (cfg.seed, split, index)."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if index < 0 or cfg.seed < 0:
        raise ValueError(f"index and cfg.seed must be >= 0, got index={index}, seed={cfg.seed}")
    return np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])


def _choice(rng: np.random.Generator, options: tuple | list) -> object:
    return options[rng.integers(len(options))]


def _sample_object(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
    """Attributes of one in-distribution object (its colour-shape pair is never held out)."""
    shape = _choice(rng, cfg.shapes)
    color = _choice(rng, [c for c in cfg.colors if not cfg.is_held_out_pair(c, shape)])
    size = _choice(rng, cfg.sizes)
    texture = _choice(rng, cfg.textures)
    digit = None
    if size == cfg.digit_size and rng.random() < cfg.digit_prob:
        digit = int(rng.integers(10))
    return {"shape": shape, "color": color, "size": size, "texture": texture, "digit": digit}


def _cell_range(region: str | None, axis: int, lo: int, hi: int, image_size: int) -> tuple[int, int]:
    """Inclusive centre range along `axis` (0 = x, 1 = y) within [lo, hi] and inside `region`'s grid cell."""
    if region is None:
        return lo, hi
    cell = region_cell(region)[axis]
    inside = [v for v in range(lo, hi + 1) if grid_cell(v, v, image_size)[axis] == cell]
    return (inside[0], inside[-1]) if inside else (1, 0)


def _place(rng: np.random.Generator, cfg: SyntheticConfig, specs: list[dict]) -> list[tuple[int, int]]:
    """Centres for objects with the given size (and optional region) keeping bounding boxes `margin` apart."""
    size, margin = cfg.image_size, cfg.margin
    radii = [cfg.radius(s["size"]) for s in specs]
    ranges = []
    for spec, r in zip(specs, radii, strict=True):
        lo, hi = r + margin, size - 1 - r - margin
        rx = _cell_range(spec.get("region"), 0, lo, hi, size)
        ry = _cell_range(spec.get("region"), 1, lo, hi, size)
        if rx[0] > rx[1] or ry[0] > ry[1]:
            raise ValueError(f"a {spec['size']} object cannot be centred in region {spec.get('region')!r}")
        ranges.append((rx, ry))
    order = sorted(range(len(specs)), key=lambda i: -radii[i])
    for _ in range(_RESTARTS):
        centres: dict[int, tuple[int, int]] = {}
        for i in order:
            (x0, x1), (y0, y1) = ranges[i]
            for _ in range(_TRIES_PER_OBJECT):
                x, y = int(rng.integers(x0, x1 + 1)), int(rng.integers(y0, y1 + 1))
                if all(
                    max(abs(x - cx) - radii[j], abs(y - cy) - radii[j]) >= radii[i] + 1 + margin
                    for j, (cx, cy) in centres.items()
                ):
                    centres[i] = (x, y)
                    break
            else:
                break
        if len(centres) == len(specs):
            return [centres[i] for i in range(len(specs))]
    raise ValueError(f"could not place {len(specs)} objects in a {size}x{size} image: {specs}")


def sample_scene(rng: np.random.Generator, cfg: SyntheticConfig, split: str) -> Scene:
    """Draw a scene for `split` (see the module docstring for the held-out rules)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kinds = [k for k, v in (("count", cfg.held_out_counts), ("pair", cfg.held_out_pairs)) if v]
    held_out = split != "train" and bool(kinds) and rng.random() < cfg.eval_held_out_prob
    kind = _choice(rng, kinds) if held_out else None
    num_objects = int(_choice(rng, cfg.held_out_counts if kind == "count" else cfg.train_counts))
    specs = [_sample_object(rng, cfg) for _ in range(num_objects)]
    if kind == "pair":
        color, shape = _choice(rng, cfg.held_out_pairs)
        specs[int(rng.integers(num_objects))].update(color=color, shape=shape)
    centres = _place(rng, cfg, specs)
    objects = [SceneObject(x=x, y=y, **spec) for spec, (x, y) in zip(specs, centres, strict=True)]
    return Scene(objects=objects, image_size=cfg.image_size)


def scene_from_spec(objects: list[dict], cfg: SyntheticConfig, rng: np.random.Generator) -> Scene:
    """Place the given objects (e.g. a generation prompt's ground truth) at random non-overlapping positions.

    Args:
        objects: dicts with "color" and "shape" (required) and optional "size" (default: random among
            `cfg.sizes`), "texture" (default "solid"), "digit" (default None) and "region" (one of `REGIONS`,
            the centre's 3x3 grid cell; default anywhere).
        cfg: world configuration (image size, radii, margin).
        rng: source of randomness for sizes and positions.
    """
    specs = []
    for spec in objects:
        unknown = set(spec) - _SPEC_KEYS
        if unknown or "color" not in spec or "shape" not in spec:
            raise ValueError(f"object spec {spec} needs 'color' and 'shape' and only keys from {sorted(_SPEC_KEYS)}")
        full = {"size": _choice(rng, cfg.sizes), "texture": "solid", "digit": None, "region": None, **spec}
        for key, known in (
            ("color", tuple(PALETTE)),
            ("shape", KNOWN_SHAPES),
            ("size", tuple(SIZE_RADIUS_FRAC)),
            ("texture", KNOWN_TEXTURES),
            ("region", (*REGIONS, None)),
        ):
            if full[key] not in known:
                raise ValueError(f"object spec {key}={full[key]!r} is not one of {known}")
        if full["digit"] is not None and full["digit"] not in range(10):
            raise ValueError(f"object spec digit={full['digit']!r} must be an int in 0..9")
        specs.append(full)
    centres = _place(rng, cfg, specs)
    scene_objects = [
        SceneObject(**{k: v for k, v in spec.items() if k != "region"}, x=x, y=y)
        for spec, (x, y) in zip(specs, centres, strict=True)
    ]
    return Scene(objects=scene_objects, image_size=cfg.image_size)


def held_out_factors(scene: Scene, cfg: SyntheticConfig) -> list[str]:
    """Held-out factors present in `scene`: 'count:N' and 'pair:color/shape' entries (empty = in-distribution)."""
    factors = [f"count:{len(scene.objects)}"] if len(scene.objects) in cfg.held_out_counts else []
    pairs = dict.fromkeys((o.color, o.shape) for o in scene.objects if cfg.is_held_out_pair(o.color, o.shape))
    return factors + [f"pair:{c}/{s}" for c, s in pairs]


def make_sample(index: int, split: str, cfg: SyntheticConfig) -> dict:
    """Sample `index` of `split`: {"key", "image" (uint8 HxWx3), "caption", "json"}.

    "json" holds {"split", "index", "seed", "scene", "captions", "qa", "held_out"}; "caption" is the canonical
    first caption (the shard's `<key>.txt`).
    """
    rng = sample_rng(cfg, split, index)
    scene = sample_scene(rng, cfg, split)
    caps = captions(scene, rng, cfg)
    meta = {
        "split": split,
        "index": index,
        "seed": cfg.seed,
        "scene": scene.to_json(),
        "captions": caps,
        "qa": questions(scene, rng, cfg),
        "held_out": held_out_factors(scene, cfg),
    }
    return {"key": f"{split}_{index:08d}", "image": render(scene, cfg), "caption": caps[0], "json": meta}
