"""GenEval-style held-out prompt set built deterministically from the synthetic world.

Six categories as in GenEval, each prompt written in one of the training-caption templates
(`cheers_pl.data.synthetic_text.captions`) so that a model trained on the synthetic captions can follow it:

| category      | template (training caption it reuses)      | example                                   |
|---------------|--------------------------------------------|-------------------------------------------|
| single_object | by-shape listing, one object               | "one object: one circle"                  |
| two_objects   | by-shape listing, two shapes               | "two objects: one circle and one square"  |
| counting      | by-shape listing, N of one shape           | "three objects: three circles"            |
| colors        | short listing, one object                  | "a red circle"                            |
| position      | relation caption                           | "a red circle to the left of a blue square" |
| color_attr    | short listing, two objects                 | "a red circle and a blue square"          |

Every prompt carries a machine-readable spec: `objects` (shape, colour or None, count) and, for position, the
relation of objects[0] to objects[1]. Prompts that use a composition never seen in training are marked in
`held_out` with `held_out_factors`' format ("pair:red/triangle", "count:4"): colour-shape pairs in colors,
position and color_attr, object counts in counting. Within a category held-out and in-distribution candidates
alternate (in-distribution first) while both last, so every prefix of a category is balanced and
`make_prompts(cfg, k, seed)` is a per-category prefix of `make_prompts(cfg, K, seed)` for k < K.

The JSONL file (one prompt per line, sorted keys) is the canonical form; `prompts_hash` is the SHA-256 of its
bytes, i.e. of the file `save_prompts` writes, and identifies the prompt set in every reported protocol.
The committed tiny set `data/prompts/geneval_tiny.jsonl` (`TINY_PROMPTS_FILE`) is
`save_prompts(make_prompts(SyntheticConfig(), TINY_PER_CATEGORY, seed=0), TINY_PROMPTS_FILE)`.

References:
    Ghosh et al., "GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment", 2023.
"""

import hashlib
import json
from dataclasses import asdict, dataclass, field
from itertools import permutations, product
from pathlib import Path

import numpy as np

from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.data.synthetic_text import PLURAL, RELATION_PHRASE, RELATIONS, indefinite, number_word

CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
_OBJECT_KEYS = {"shape", "color", "count"}
TINY_PROMPTS_FILE = "data/prompts/geneval_tiny.jsonl"  # relative to the repository root
TINY_PER_CATEGORY = 16


@dataclass
class GenEvalPrompt:
    """One prompt: its text, category and ground-truth spec.

    `objects` holds dicts {"shape": str, "color": str | None, "count": int}; `relation` (position only) is one of
    `RELATIONS` and says where objects[0] lies relative to objects[1].
    """

    id: str
    category: str
    text: str
    objects: list[dict]
    relation: str | None = None
    held_out: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"prompt {self.id!r}: category must be one of {CATEGORIES}, got {self.category!r}")
        for obj in self.objects:
            if set(obj) != _OBJECT_KEYS or not isinstance(obj["count"], int) or obj["count"] < 1:
                raise ValueError(f"prompt {self.id!r}: object spec {obj} needs keys {sorted(_OBJECT_KEYS)}, count >= 1")
        if (self.relation is not None) != (self.category == "position"):
            raise ValueError(f"prompt {self.id!r}: relation={self.relation!r} must be set exactly for position")
        if self.relation is not None and (self.relation not in RELATIONS or len(self.objects) != 2):
            raise ValueError(f"prompt {self.id!r}: relation must be one of {RELATIONS} between two objects")

    def to_json(self) -> dict:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "GenEvalPrompt":
        """Inverse of `to_json`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        if unknown := set(data) - known:
            raise ValueError(f"unknown GenEvalPrompt keys {sorted(unknown)}")
        return cls(**data)


def _obj(shape: str, color: str | None = None, count: int = 1) -> dict:
    return {"shape": shape, "color": color, "count": count}


def _pair_factors(cfg: SyntheticConfig, pairs: list[tuple[str, str]]) -> list[str]:
    return [f"pair:{c}/{s}" for c, s in dict.fromkeys(pairs) if cfg.is_held_out_pair(c, s)]


def _candidates(category: str, cfg: SyntheticConfig) -> list[tuple[str, list[dict], str | None, list[str]]]:
    """All (text, objects, relation, held_out) of a category, in a fixed enumeration order."""
    shapes, colors = cfg.shapes, cfg.colors
    out = []
    if category == "single_object":
        out = [(f"one object: one {s}", [_obj(s)], None, []) for s in shapes]
    elif category == "two_objects":
        out = [(f"two objects: one {a} and one {b}", [_obj(a), _obj(b)], None, []) for a, b in permutations(shapes, 2)]
    elif category == "counting":
        for s, n in product(shapes, range(max(2, cfg.min_objects), cfg.max_objects + 1)):
            text = f"{number_word(n)} objects: {number_word(n)} {PLURAL[s]}"
            out.append((text, [_obj(s, count=n)], None, [f"count:{n}"] if n in cfg.held_out_counts else []))
    elif category == "colors":
        for c, s in product(colors, shapes):
            out.append((indefinite(f"{c} {s}"), [_obj(s, c)], None, _pair_factors(cfg, [(c, s)])))
    else:
        for (s1, s2), c1, c2 in product(permutations(shapes, 2), colors, colors):
            if c1 == c2:
                continue
            a, b, held = indefinite(f"{c1} {s1}"), indefinite(f"{c2} {s2}"), _pair_factors(cfg, [(c1, s1), (c2, s2)])
            objects = [_obj(s1, c1), _obj(s2, c2)]
            if category == "color_attr":
                out.append((f"{a} and {b}", objects, None, held))
            else:
                out += [(f"{a} {RELATION_PHRASE[r]} {b}", objects, r, held) for r in RELATIONS]
    return out


def make_prompts(cfg: SyntheticConfig, per_category: int, seed: int = 0) -> list[GenEvalPrompt]:
    """The prompt set: `per_category` prompts of each of `CATEGORIES`, deterministic in (cfg vocabulary, seed).

    Candidates are shuffled per category; held-out and in-distribution ones alternate while both last. When
    `per_category` exceeds a category's candidates (e.g. single_object has one per shape) the order repeats.

    Raises:
        ValueError: per_category < 1, seed < 0, or a world with fewer than 2 shapes / colours / objects.
    """
    if not isinstance(per_category, int) or per_category < 1:
        raise ValueError(f"per_category must be a positive integer, got {per_category!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if len(cfg.shapes) < 2 or len(cfg.colors) < 2 or cfg.max_objects < 2:
        raise ValueError(
            f"GenEval prompts need >= 2 shapes, >= 2 colors and max_objects >= 2, got shapes={cfg.shapes}, "
            f"colors={cfg.colors}, max_objects={cfg.max_objects}"
        )
    prompts = []
    for k, category in enumerate(CATEGORIES):
        rng = np.random.default_rng([seed, k])
        cands = _candidates(category, cfg)
        cands = [cands[i] for i in rng.permutation(len(cands))]
        held = [c for c in cands if c[3]]
        indist = [c for c in cands if not c[3]]
        order = []
        for i in range(max(len(held), len(indist))):
            order += [group[i] for group in (indist, held) if i < len(group)]
        for i in range(per_category):
            text, objects, relation, held_out = order[i % len(order)]
            prompts.append(GenEvalPrompt(f"{category}_{i:04d}", category, text, objects, relation, held_out))
    return prompts


def prompts_to_jsonl(prompts: list[GenEvalPrompt]) -> str:
    """The canonical JSONL text: one prompt per line, sorted keys, trailing newline."""
    return "".join(json.dumps(p.to_json(), sort_keys=True) + "\n" for p in prompts)


def prompts_hash(prompts: list[GenEvalPrompt]) -> str:
    """SHA-256 hex digest of the canonical JSONL text (equals the hash of the file `save_prompts` writes)."""
    return hashlib.sha256(prompts_to_jsonl(prompts).encode("utf-8")).hexdigest()


def save_prompts(prompts: list[GenEvalPrompt], path: str | Path) -> str:
    """Writes the canonical JSONL file (parents created) and returns its hash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(prompts_to_jsonl(prompts).encode("utf-8"))
    return prompts_hash(prompts)


def load_prompts(path: str | Path) -> list[GenEvalPrompt]:
    """Reads a prompts JSONL file; a malformed line is a ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompts file {str(path)!r} not found")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(GenEvalPrompt.from_json(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}:{n}: bad GenEval prompt: {err}") from err
    return prompts
