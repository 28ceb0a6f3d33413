"""Synthetic compositional world: exact captions and question-answer pairs for a scene.

Every stated fact is true of the scene. Captions come from several templates; the first is canonical
(deterministic, complete: count, and per object size, colour, texture, shape, digit and region).
Questions only name objects through a referring expression that matches exactly one object, relations are
only asked when the centres differ by at least the small-object radius along the asked axis, and answers are
single lower-case words: number words for counts, colour / shape names, texture adjectives
(`TEXTURE_ADJ`), digits as numerals ("7"), and "yes" / "no".
"""

from itertools import combinations

import numpy as np

from cheers_pl.data.synthetic_scene import Scene, SceneObject, SyntheticConfig, grid_cell, region_phrase

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
TEXTURE_ADJ = {"solid": "solid", "stripes": "striped", "checks": "checkered", "dots": "dotted"}
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds", "cross": "crosses"}
RELATIONS = ("left of", "right of", "above", "below")
RELATION_PHRASE = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
MAX_QUESTIONS_PER_CATEGORY = 2
# questions about one object's attribute ({ref}: a referring expression that does not use that attribute)
ATTRIBUTE_QUESTIONS = {"color": "what color is {ref}?", "shape": "what shape is {ref}?",
                       "texture": "what texture does {ref} have?"}  # fmt: skip


def number_word(n: int) -> str:
    """English word for a small count."""
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def indefinite(phrase: str) -> str:
    """Prefix `phrase` with 'a' or 'an'."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _noun(shape: str, n: int) -> str:
    return shape if n == 1 else PLURAL[shape]


def describe(obj: SceneObject, image_size: int, with_region: bool = True) -> str:
    """Full indefinite description: 'a large red striped circle with the digit 7 at the top left'."""
    return indefinite(_bare_description(obj, image_size, with_region))


def _bare_description(obj: SceneObject, image_size: int, with_region: bool = True) -> str:
    text = f"{obj.size} {obj.color} {TEXTURE_ADJ[obj.texture]} {obj.shape}"
    if obj.digit is not None:
        text += f" with the digit {obj.digit}"
    if with_region:
        text += " " + region_phrase(obj.region(image_size))
    return text


def reading_order(scene: Scene) -> list[SceneObject]:
    """Objects sorted top to bottom by region row (thirds of the image), then left to right."""
    return sorted(scene.objects, key=lambda o: (grid_cell(o.x, o.y, scene.image_size)[1], o.x, o.y))


def min_relation_gap(cfg: SyntheticConfig) -> int:
    """Pixels by which two centres must differ along an axis before a relation along it is stated."""
    return cfg.radius(min(cfg.sizes, key=cfg.radius))


def referring_expression(obj: SceneObject, scene: Scene, exclude: tuple[str, ...] = ()) -> str | None:
    """Shortest 'the ...' phrase (size, colour, texture adjectives + shape noun) naming only `obj`, or None.

    Attributes in `exclude` are never used (the shape noun becomes 'object' when the shape is excluded).
    """
    optional = [a for a in ("color", "size", "texture") if a not in exclude]
    base = () if "shape" in exclude else ("shape",)
    for k in range(len(optional) + 1):
        for extra in combinations(optional, k):
            attrs = base + extra
            matches = [o for o in scene.objects if all(getattr(o, a) == getattr(obj, a) for a in attrs)]
            if len(matches) == 1:
                words = [obj.size if "size" in attrs else "", obj.color if "color" in attrs else ""]
                words.append(TEXTURE_ADJ[obj.texture] if "texture" in attrs else "")
                words.append(obj.shape if "shape" in attrs else "object")
                return "the " + " ".join(w for w in words if w)
    return None


def attribute_question(obj: SceneObject, scene: Scene, attribute: str) -> str | None:
    """The question asking `obj`'s colour, shape or texture, naming it without that attribute; None if nothing else
    singles it out."""
    ref = referring_expression(obj, scene, exclude=(attribute,))
    return None if ref is None else ATTRIBUTE_QUESTIONS[attribute].format(ref=ref)


def attribute_answer(obj: SceneObject, attribute: str) -> str:
    """The one-word answer to `attribute_question` (texture as its adjective)."""
    return TEXTURE_ADJ[obj.texture] if attribute == "texture" else getattr(obj, attribute)


def relation_holds(a: SceneObject, b: SceneObject, relation: str) -> bool:
    """Whether `a` is `relation` `b`, comparing centres (image y grows downwards)."""
    return {"left of": a.x < b.x, "right of": a.x > b.x, "above": a.y < b.y, "below": a.y > b.y}[relation]


def relation_is_clear(a: SceneObject, b: SceneObject, relation: str, min_gap: float) -> bool:
    """Whether the centres differ by at least `min_gap` pixels along the relation's axis."""
    gap = abs(a.x - b.x) if relation in ("left of", "right of") else abs(a.y - b.y)
    return gap >= min_gap


def _clear_pairs(scene: Scene, min_gap: float) -> list[tuple[SceneObject, SceneObject, str]]:
    return [
        (a, b, rel)
        for a in scene.objects
        for b in scene.objects
        for rel in RELATIONS
        if a is not b and relation_holds(a, b, rel) and relation_is_clear(a, b, rel, min_gap)
    ]


def captions(scene: Scene, rng: np.random.Generator, cfg: SyntheticConfig | None = None) -> list[str]:
    """Six captions of `scene` from different templates; the first is canonical (independent of `rng`)."""
    cfg = cfg or SyntheticConfig(image_size=scene.image_size)
    objs, n, size = scene.objects, len(scene.objects), scene.image_size
    head = f"{number_word(n)} {'object' if n == 1 else 'objects'}"
    canonical = f"{head}: " + _join([describe(o, size) for o in reading_order(scene)])
    shuffled = [objs[i] for i in rng.permutation(n)]
    listing = _join([describe(o, size) for o in shuffled])
    shape_counts = {s: sum(o.shape == s for o in objs) for s in dict.fromkeys(o.shape for o in shuffled)}
    by_shape = f"{head}: " + _join([f"{number_word(k)} {_noun(s, k)}" for s, k in shape_counts.items()])
    color_counts = {c: sum(o.color == c for o in objs) for c in dict.fromkeys(o.color for o in shuffled)}
    by_color = f"there {'is' if n == 1 else 'are'} {head}: " + _join(
        [f"{number_word(k)} {c} {'object' if k == 1 else 'objects'}" for c, k in color_counts.items()]
    )
    short = _join([indefinite(f"{o.color} {o.shape}") for o in shuffled])
    pairs = _clear_pairs(scene, min_relation_gap(cfg))
    if pairs:
        a, b, rel = pairs[rng.integers(len(pairs))]
        relation = f"{indefinite(f'{a.color} {a.shape}')} {RELATION_PHRASE[rel]} {indefinite(f'{b.color} {b.shape}')}"
    else:
        relation = f"a single {_bare_description(objs[0], size)}" if n == 1 else listing
    return [canonical, listing, by_shape, by_color, relation, short]


def _pick(items: list[dict], rng: np.random.Generator) -> list[dict]:
    if len(items) <= MAX_QUESTIONS_PER_CATEGORY:
        return items
    return [items[i] for i in sorted(rng.choice(len(items), MAX_QUESTIONS_PER_CATEGORY, replace=False))]


def questions(scene: Scene, rng: np.random.Generator, cfg: SyntheticConfig | None = None) -> list[dict]:
    """Up to two questions per category (count, color, shape, relation, texture, digit) with one-word answers."""
    cfg = cfg or SyntheticConfig(image_size=scene.image_size)
    objs = scene.objects
    qa: dict[str, list[dict]] = {c: [] for c in ("count", "color", "shape", "relation", "texture", "digit")}

    def add(category: str, question: str, answer: str) -> None:
        qa[category].append({"question": question, "answer": answer, "category": category})

    add("count", "how many objects are there?", number_word(len(objs)))
    color = cfg.colors[rng.integers(len(cfg.colors))]
    add("count", f"how many {color} objects are there?", number_word(sum(o.color == color for o in objs)))
    shape = cfg.shapes[rng.integers(len(cfg.shapes))]
    add("count", f"how many {PLURAL[shape]} are there?", number_word(sum(o.shape == shape for o in objs)))
    for obj in objs:
        for attribute in ATTRIBUTE_QUESTIONS:
            if question := attribute_question(obj, scene, attribute):
                add(attribute, question, attribute_answer(obj, attribute))
        if obj.digit is not None and (ref := referring_expression(obj, scene)):
            add("digit", f"what digit is written on {ref}?", str(obj.digit))
    min_gap = min_relation_gap(cfg)
    for a, b in combinations(objs, 2):
        ref_a, ref_b = referring_expression(a, scene), referring_expression(b, scene)
        if ref_a is None or ref_b is None:
            continue
        if rng.random() < 0.5:
            a, b, ref_a, ref_b = b, a, ref_b, ref_a
        clear = [r for r in RELATIONS if relation_is_clear(a, b, r, min_gap)]
        if clear:
            rel = clear[rng.integers(len(clear))]
            add("relation", f"is {ref_a} {RELATION_PHRASE[rel]} {ref_b}?", "yes" if relation_holds(a, b, rel) else "no")
    return [q for items in qa.values() for q in _pick(items, rng)]
