"""Diagnoses 1h and 1i: does every image token carry the whole scene, and is that what keeps the LLM from binding?

1h, scene summary: on tokens that no object touches (not one pixel of an object in the token's cell), probes read the
colour, shape and texture of the scene's first object in reading order, from the empty token farthest from it (so
that a windowed encoder's neighbourhood does not count). Pixels of such a cell hold only background, so their probe
stays at chance; an encoder whose tokens describe what lies under them does too. A high figure means
that every token carries a summary of the scene: an LLM can then answer "what colour is the square?" from any token
with a colour of the scene, without finding the square.
1i, binding from controlled tokens: a fresh LLM of the stage's config and a fresh token compressor learn the same
single-question rows (colour, shape, texture and count questions of train scenes; relation on request) over token
sources:
- oracle: per semantic-grid cell, the one-hot attributes of the object under it (`synthetic_labels`), nothing else;
- oracle+summary: the same, plus the scene's sets of colours, shapes and textures in every token;
- oracle+position: oracle, plus the cell's row and column (one-hot) in its token;
- semantic: the tokenizer's own semantic tokens of D(x1).
Scored by teacher-forced exact match of the answer on test questions about scenes of two or more objects (counts on
all scenes). If oracle binds and oracle+summary does not, a summary in every token is enough to stop the LLM; where
"semantic" lands says which of the two the tokenizer's tokens behave like. Relation questions ("is the red circle
to the left of the blue square?", yes / no) ask whether the LLM can compare two named objects' places: over oracle
tokens it sees where each object is only through the token's place in the sequence, over oracle+position also in
the token itself.

Shape legend: B scenes, M semantic tokens, C channels, g grid side.
"""

import dataclasses
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cheers_pl.data.batch import Example, collate
from cheers_pl.data.synthetic_labels import ATTRIBUTES, attribute_classes, token_attribute_labels
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.data.synthetic_text import reading_order
from cheers_pl.data.tasks import TASK_UNDERSTANDING
from cheers_pl.diagnose.probes import fit_probe, grids, scene_samples, scenes
from cheers_pl.model.attention_mask import block_causal_mask, positions_from_padding
from cheers_pl.model.llm import LLM
from cheers_pl.model.projectors import TokenCompressor, TokenCompressorConfig
from cheers_pl.optim import OptimConfig, build_optimizer

SUMMARY_TARGETS = ("color", "shape", "texture")
SUMMARY_FEATURES = ("pixels", "semantic", "llm")
TOKEN_SOURCES = ("oracle", "oracle+summary", "oracle+position", "semantic")
DEFAULT_TOKEN_SOURCES = ("oracle", "oracle+summary", "semantic")
BINDING_CATEGORIES = ("color", "shape", "texture", "count", "relation")
DEFAULT_BINDING_CATEGORIES = ("color", "shape", "texture", "count")


def check_binding_choice(name: str, values: Sequence[str], known: Sequence[str]) -> None:
    """Raises ValueError naming `name` when `values` is empty or holds anything outside `known` (1i's sources and
    categories; `DiagnoseArgs` checks the same before a checkpoint is read)."""
    if not values or set(values) - set(known):
        raise ValueError(f"{name}: got {list(values)}; known: {list(known)}")


def empty_cells(scene: Scene, cfg: SyntheticConfig, grid: int) -> np.ndarray:
    """Raster indices of the cells of a g×g grid that no object touches."""
    labels_Agg = token_attribute_labels(scene, cfg, grid, min_frac=1e-9)  # any object pixel labels the cell
    return np.flatnonzero(labels_Agg[0].reshape(-1) == 0)


def _summary_rows(grid_BCgg: torch.Tensor, scene_list: list[Scene], cfg: SyntheticConfig) -> tuple[torch.Tensor, dict]:
    """One empty-cell feature vector per scene of two or more objects that has one, and the targets."""
    rows, targets = [], {t: [] for t in SUMMARY_TARGETS}
    g = grid_BCgg.shape[-1]
    for i, scene in enumerate(scene_list):
        cells = empty_cells(scene, cfg, g)
        if len(scene.objects) < 2 or not len(cells):
            continue
        first = reading_order(scene)[0]
        # the empty cell farthest from that object (Chebyshev, pixels), so that a windowed encoder's neighbourhood
        # does not count as a summary
        cell_px = scene.image_size / g
        far = np.maximum(np.abs((cells % g + 0.5) * cell_px - first.x), np.abs((cells // g + 0.5) * cell_px - first.y))
        rows.append(grid_BCgg[i].flatten(1)[:, cells[np.argmax(far)]])
        for t in SUMMARY_TARGETS:
            targets[t].append(getattr(first, t))
    return torch.stack(rows), targets


def run_scene_summary(
    vision: nn.Module, cfg: SyntheticConfig, num_train: int = 1500, num_test: int = 400, steps: int = 300
) -> dict[str, Any]:
    """1h: per feature set, linear / MLP probe accuracy of the first object's attributes from an empty token.

    Returns:
        {"probes": {feature: {target: {"linear", "mlp"}}}, "protocol": {...}}.
    """
    train_images, train_scenes = scenes(cfg, "train", num_train, in_distribution=True)
    test_images, test_scenes = scenes(cfg, "test", num_test, in_distribution=True)
    vision.eval()
    g_train, g_test = grids(vision, train_images), grids(vision, test_images)
    out: dict[str, Any] = {}
    for feature in SUMMARY_FEATURES:
        x_train, y_train = _summary_rows(g_train[feature], train_scenes, cfg)
        x_test, y_test = _summary_rows(g_test[feature], test_scenes, cfg)
        out[feature] = {
            t: {kind: fit_probe(x_train, y_train[t], x_test, y_test[t], kind, steps) for kind in ("linear", "mlp")}
            for t in SUMMARY_TARGETS
        }
        out[feature]["grid"] = g_train[feature].shape[-1]
    protocol = {"num_train_scenes": num_train, "num_test_scenes": num_test, "probe_steps": steps,
                "target": "first object (reading order), from the empty token farthest from it"}  # fmt: skip
    return {"probes": out, "protocol": protocol}


def oracle_tokens(
    scene_list: list[Scene], cfg: SyntheticConfig, grid: int, summary: bool, position: bool = False
) -> torch.Tensor:
    """B×M×C one-hot attributes of the object under each cell (class 0 = none), optionally followed in every token by
    the scene's colour, shape and texture sets (multi-hot, `summary`) or by the cell's row and column (two one-hots
    of `grid`, `position`)."""
    classes = attribute_classes(cfg)
    cells = np.arange(grid * grid)
    place = np.concatenate([np.eye(grid)[cells // grid], np.eye(grid)[cells % grid]], axis=1)
    rows = []
    for scene in scene_list:
        labels_AM = token_attribute_labels(scene, cfg, grid).reshape(len(ATTRIBUTES), -1)
        parts = [np.eye(len(classes[a]))[labels_AM[j]] for j, a in enumerate(ATTRIBUTES)]
        if summary:
            present = [[float(any(getattr(o, a) == v for o in scene.objects)) for v in classes[a][1:]]
                       for a in SUMMARY_TARGETS]  # fmt: skip
            parts.append(np.tile(np.concatenate(present), (labels_AM.shape[1], 1)))
        if position:
            parts.append(place)
        rows.append(torch.tensor(np.concatenate(parts, axis=1), dtype=torch.float32))
    return torch.stack(rows)


def _questions(
    cfg: SyntheticConfig, split: str, num: int, categories: tuple[str, ...] = DEFAULT_BINDING_CATEGORIES
) -> tuple[torch.Tensor, list[Scene], list[list[dict]]]:
    """Images, scenes and per scene its questions of `categories` (attribute questions only of scenes of two or more
    objects outside the train split; held-out compositions included)."""
    images, scene_list, records = scene_samples(cfg, split, num, in_distribution=False)
    qa = [[q for q in record["qa"] if q["category"] in categories
           and (q["category"] == "count" or len(scene.objects) >= 2 or split == "train")]
          for scene, record in zip(scene_list, records, strict=True)]  # fmt: skip
    return images, scene_list, qa


class _Learner(nn.Module):
    """A fresh LLM + token compressor over given semantic-grid features; `loss_and_hits` on question rows.

    The LLM is of the stage's config with `llm_overrides` (LLMConfig fields) applied, the compressor of the stage's
    factor unless `compression` names another (1 = one LLM token per semantic token).
    """

    def __init__(
        self, stage: Any, in_dim: int, llm_overrides: dict[str, Any] | None = None, compression: int | None = None
    ) -> None:
        super().__init__()
        model, llm_overrides = stage.model, dict(llm_overrides or {})
        fields = {f.name for f in dataclasses.fields(model.llm.cfg)} - {"pretrained", "vocab_size"}
        if set(llm_overrides) - fields:
            raise ValueError(f"1i learner LLM: unknown fields {sorted(set(llm_overrides) - fields)}; known: "
                             f"{sorted(fields)}")  # fmt: skip
        self.grid_hw = model.vision.semantic_grid_hw
        llm_cfg = dataclasses.replace(model.llm.cfg, pretrained=None, vocab_size=model.llm.vocab_size, **llm_overrides)
        self.llm = LLM(llm_cfg)
        factor = model.vision.compressor.cfg.factor if compression is None else compression
        self.compressor = TokenCompressor(TokenCompressorConfig(in_dim, self.llm.hidden_dim, factor))
        h, w = self.compressor.output_grid(self.grid_hw)
        self.builder = dataclasses.replace(stage.pipeline.builder, num_image_tokens=h * w)  # the stage stays out

    def loss_and_hits(self, feats_BMC: torch.Tensor, qa: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean answer cross-entropy and, per row, whether every answer token is the argmax (teacher forced)."""
        blank = torch.zeros(3, 1, 1)
        examples = [Example(f"q{i}", TASK_UNDERSTANDING, blank, self.builder.understanding(q["question"], q["answer"]))
                    for i, q in enumerate(qa)]  # fmt: skip
        batch = collate(examples, self.builder.ids["pad"])
        embeds = self.llm.embed_tokens(batch.input_ids)
        is_image_BL = batch.block_ids > 0  # every row holds one image block
        rows_R = is_image_BL.any(dim=1).nonzero()[:, 0]
        cols_RN = is_image_BL[rows_R].nonzero()[:, 1].view(len(rows_R), -1)
        embeds = embeds.index_put((rows_R[:, None], cols_RN), self.compressor(feats_BMC, self.grid_hw))
        mask = block_causal_mask(batch.block_ids, batch.pad_mask)
        logits = self.llm(embeds, mask, positions_from_padding(batch.pad_mask)).logits_BLV[:, :-1]
        targets = batch.labels[:, 1:]
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        hits = ((logits.argmax(-1) == targets) | (targets < 0)).all(dim=1)
        return loss, hits


def _score(learner: _Learner, feats_BMC: torch.Tensor, qa: list[list[dict]], batch_size: int = 128) -> dict:
    items = [(i, q) for i, row in enumerate(qa) for q in row]
    hits: dict[str, list[bool]] = {c: [] for c in BINDING_CATEGORIES}
    learner.eval()
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            _, ok = learner.loss_and_hits(feats_BMC[[i for i, _ in chunk]], [q for _, q in chunk])
            for (_, q), hit in zip(chunk, ok.tolist(), strict=True):
                hits[q["category"]].append(hit)
    learner.train()
    return {c: round(float(np.mean(v)), 3) for c, v in hits.items() if v}


def run_token_binding(
    stage: Any, cfg: SyntheticConfig, steps: int = 1000, batch_size: int = 64, num_train: int = 4000,
    num_test: int = 400, lr: float = 3e-3, evals: int = 4, seed: int = 0,
    sources: tuple[str, ...] = DEFAULT_TOKEN_SOURCES, llm_overrides: dict[str, Any] | None = None,
    compression: int | None = None, categories: tuple[str, ...] = DEFAULT_BINDING_CATEGORIES,
) -> dict[str, Any]:  # fmt: skip
    """1i: per token source, the exact-match curve of a fresh LLM + compressor (see the module docstring).

    `llm_overrides` (LLMConfig fields, e.g. {"num_layers": 4}) and `compression` change the fresh learner only, so
    that one run can ask whether another LLM binds over the same tokens.

    Returns:
        {source: {"curve": [{"step", "loss", category: accuracy}], "final": {...}, "seconds"}, "protocol": {...}}.
    """
    check_binding_choice("1i token sources", sources, TOKEN_SOURCES)
    check_binding_choice("1i categories", categories, BINDING_CATEGORIES)
    vision = stage.model.vision
    train_images, train_scenes, train_qa = _questions(cfg, "train", num_train, tuple(categories))
    test_images, test_scenes, test_qa = _questions(cfg, "test", num_test, tuple(categories))
    grid = vision.semantic_grid_hw[0]

    def semantic(images: torch.Tensor) -> torch.Tensor:
        vision.eval()
        with torch.no_grad():
            return torch.cat([vision.features(vision.encode(images[s : s + 128])).semantic
                              for s in range(0, len(images), 128)])  # fmt: skip

    build = {
        "oracle": lambda s, _: oracle_tokens(s, cfg, grid, summary=False),
        "oracle+summary": lambda s, _: oracle_tokens(s, cfg, grid, summary=True),
        "oracle+position": lambda s, _: oracle_tokens(s, cfg, grid, summary=False, position=True),
        "semantic": lambda _, images: semantic(images),
    }
    out: dict[str, Any] = {}
    usable = [i for i, row in enumerate(train_qa) if row]
    every = max(steps // evals, 1)
    for name in sources:
        feats_train, feats_test = build[name](train_scenes, train_images), build[name](test_scenes, test_images)
        torch.manual_seed(seed)
        learner = _Learner(stage, feats_train.shape[-1], llm_overrides, compression)
        optimizer, scheduler = build_optimizer(
            list(learner.named_parameters()),
            OptimConfig(lr=lr, warmup_frac=0.05, schedule="cosine"),
            steps,
        )
        rng, curve, started = random.Random(seed), [], time.perf_counter()
        learner.train()
        for step in range(1, steps + 1):
            idx = rng.sample(usable, min(batch_size, len(usable)))
            with torch.enable_grad():
                loss, _ = learner.loss_and_hits(feats_train[idx], [rng.choice(train_qa[i]) for i in idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            scheduler.step()
            if step % every == 0 or step == steps:
                curve.append({"step": step, "loss": round(loss.item(), 4), **_score(learner, feats_test, test_qa)})
        out[name] = {"curve": curve, "final": {k: v for k, v in curve[-1].items() if k in BINDING_CATEGORIES},
                     "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip
    llm_cfg = dataclasses.asdict(learner.llm.cfg)
    out["protocol"] = {"steps": steps, "batch_size": batch_size, "lr": lr, "num_train_scenes": num_train,
                       "num_test_scenes": num_test, "seed": seed, "sources": list(sources), "llm": llm_cfg,
                       "llm_overrides": dict(llm_overrides or {}),
                       "compression": learner.compressor.cfg.factor,
                       "categories": list(categories)}  # fmt: skip
    return out
