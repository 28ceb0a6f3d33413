"""Diagnoses 1b and 1c: can the model fit what it sees, on a fixed handful of examples?

1b, binding: 64 understanding examples that ask the SAME few questions of different images (so the answer must come
from the image) are fitted by the projector and the LLM over the frozen tokenizer; exact match must reach ≥ 0.98.
The control fits the same examples with every image blanked, for as many steps as the image run took to reach
0.98 (all of them when it did not), and must stay near the per-question majority rate (text-only memorising cannot
beat it). A masking, position or embedding-placement bug fails the first; a leak of the answer into the text passes
the control.
1c, flow: a few prompt → scene pairs are fitted by the generation loss (projector, LLM and flow head train, with the
stage's guidance dropout), then sampled with the stage's sampler settings and parsed back with the scene parser.
1f, steering: can the prompt steer the attributes of a fixed layout? Every "a <colour> <shape>" prompt of the world is
paired with one large solid object of that colour and shape at the centre, the same layout for all, and fitted by
the generation loss like 1c; the samples are parsed for the object count, the shape and the colour separately, with
the stage's sampler settings, at guidance 1, and as the one-step data estimate x̂1 = x0 + v̂(x0, 0) (what the head
predicts from pure noise). An attribute that stays low while the others are fitted is one the prompt does not steer.
All run on a deep copy of the stage with the tokenizer's features cached: the checkpoint is left as it was.

Shape legend: B examples, H/W image side.
"""

import copy
import dataclasses
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import torch

from cheers_pl.data.batch import Batch, Example, collate
from cheers_pl.data.processing import to_uint8
from cheers_pl.data.synthetic import make_sample
from cheers_pl.data.synthetic_render import render
from cheers_pl.data.synthetic_scene import Scene, SceneObject, SyntheticConfig
from cheers_pl.data.tasks import TASK_GENERATION, TASK_UNDERSTANDING
from cheers_pl.eval.scene_parser import match_scene, parse_scene
from cheers_pl.eval.vqa import normalize_answer
from cheers_pl.optim import OptimConfig, build_optimizer

BINDING_CATEGORIES = ("color", "shape", "count")
# what each fit trains: the LLM path (projector + LLM) over the frozen tokenizer, whose features are cached
BINDING_TRAINABLE = ("model.vision.compressor.*", "model.llm.*")
FLOW_TRAINABLE = ("model.vision.compressor.*", "model.llm.*", "model.flow_head.*")


def _work_copy(stage: Any, trainable: tuple[str, ...]) -> Any:
    work = copy.deepcopy(stage)
    work.stage_cfg = dataclasses.replace(work.stage_cfg, cache_frozen=True)
    work.declare_trainable(list(trainable))
    return work


def _image(image_HW3: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image_HW3).permute(2, 0, 1).float() / 127.5 - 1


def _sampler_settings(stage: Any) -> dict[str, Any]:
    sampling = stage.stage_cfg.sampling
    return {k: getattr(sampling, k) for k in ("num_steps", "guidance_scale", "alpha", "sampler")}


def binding_examples(cfg: SyntheticConfig, num: int = 64, num_questions: int = 4) -> list[dict]:
    """`num` (image, question, answer) triples: `num_questions` question texts asked of num / num_questions
    different train images each, picked among the most frequent colour / shape / count questions with ≥ 3
    distinct answers (at most two texts per category)."""
    per_question = num // num_questions
    groups: dict[str, list[tuple[int, dict]]] = defaultdict(list)
    for index in range(3000):
        for qa in make_sample(index, "train", cfg)["json"]["qa"]:
            if qa["category"] in BINDING_CATEGORIES:
                groups[qa["question"]].append((index, qa))
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    chosen: list[str] = []
    per_category: Counter[str] = Counter()
    for question, items in ranked:
        category = items[0][1]["category"]
        if len({qa["answer"] for _, qa in items}) >= 3 and len(items) >= per_question and per_category[category] < 2:
            chosen.append(question)
            per_category[category] += 1
        if len(chosen) == num_questions:
            break
    out = []
    for question in chosen:
        for index, qa in groups[question][:per_question]:
            out.append({"index": index, "question": question, "answer": qa["answer"], "category": qa["category"]})
    return out


def _understanding_batch(stage: Any, items: list[dict], images: torch.Tensor) -> Batch:
    builder = stage.pipeline.builder
    examples = [
        Example(f"probe_{i}", TASK_UNDERSTANDING, images[i], builder.understanding(it["question"], it["answer"]))
        for i, it in enumerate(items)
    ]
    return collate(examples, builder.ids["pad"])


def _fit(stage: Any, loss_fn: Any, steps: int, lr: float, every: int, evaluate: Any, target: float) -> dict:
    optimizer, _ = build_optimizer(stage.trainable_parameters(), OptimConfig(lr=lr, warmup_frac=0.0,
                                   schedule="constant"), steps)  # fmt: skip
    curve, reached, started = [], None, time.perf_counter()
    stage.train()
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = loss_fn()
            loss.backward()
        optimizer.step()
        if step % every == 0 or step == steps:
            stage.eval()
            score = evaluate()
            curve.append({"step": step, "loss": round(float(loss.detach()), 4), "score": round(score, 4)})
            if score >= target and reached is None:
                reached = step
                break
            stage.train()
    return {"curve": curve, "final": curve[-1]["score"], "reached_at_step": reached,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def run_binding(stage: Any, cfg: SyntheticConfig, steps: int = 300, lr: float = 1e-3, every: int = 25) -> dict:
    """1b (see the module docstring): exact match with the images and with blank images, and the chance rate."""
    items = binding_examples(cfg)
    images = torch.stack([_image(make_sample(it["index"], "train", cfg)["image"]) for it in items])
    answers = [normalize_answer(it["answer"]) for it in items]
    majority = defaultdict(Counter)
    for it, a in zip(items, answers, strict=True):
        majority[it["question"]][a] += 1
    chance = sum(c.most_common(1)[0][1] for c in majority.values()) / len(items)
    out: dict[str, Any] = {"questions": sorted(majority), "num_examples": len(items), "chance": round(chance, 4)}
    budget = steps
    for name, imgs in (("image", images), ("blank", torch.zeros_like(images))):
        work = _work_copy(stage, BINDING_TRAINABLE)
        batch = _understanding_batch(work, items, imgs)
        t = torch.ones(len(items))

        def loss_fn(work: Any = work, batch: Batch = batch, t: torch.Tensor = t) -> torch.Tensor:
            return work.losses(batch, batch.input_ids, t)["loss"]

        def evaluate(work: Any = work, imgs: torch.Tensor = imgs) -> float:
            preds = work.answer(imgs, [it["question"] for it in items], max_new_tokens=8)
            return float(np.mean([normalize_answer(p) == a for p, a in zip(preds, answers, strict=True)]))

        out[name] = _fit(work, loss_fn, budget, lr, every, evaluate, target=0.98 if name == "image" else 1.01)
        budget = out[name]["reached_at_step"] or steps  # the control gets the image run's budget, no more
    return out


def flow_examples(cfg: SyntheticConfig, num: int = 4) -> list[dict]:
    """`num` train scenes of one or two objects with their canonical captions."""
    out, index = [], 0
    while len(out) < num:
        sample = make_sample(index, "train", cfg)
        index += 1
        if len(sample["json"]["scene"]["objects"]) <= 2:
            out.append(
                {"index": sample["json"]["index"], "prompt": sample["caption"], "scene": sample["json"]["scene"]}
            )
    return out


def run_flow_overfit(
    stage: Any, cfg: SyntheticConfig, steps: int = 400, lr: float = 1e-3, every: int = 100, num: int = 4
) -> dict:
    """1c: fit `num` prompt → scene pairs with the generation loss, sample them, parse them back.

    The score is the share of scenes whose every object is recovered with its shape and colour and no object is
    extra, sampled with the stage's `sampling` settings (seed 0).
    """
    items = flow_examples(cfg, num)
    work = _work_copy(stage, FLOW_TRAINABLE)
    builder = work.pipeline.builder
    images = torch.stack([_image(make_sample(it["index"], "train", cfg)["image"]) for it in items])
    examples = [
        Example(f"flow_{i}", TASK_GENERATION, images[i], builder.generation(it["prompt"]), {"caption": it["prompt"]})
        for i, it in enumerate(items)
    ]
    batch = collate(examples, builder.ids["pad"])
    scenes = [Scene.from_json(it["scene"]) for it in items]
    prompts = [it["prompt"] for it in items]
    last: dict[str, Any] = {}

    def loss_fn() -> torch.Tensor:
        return work.losses(batch, work._drop_condition(batch), work._flow_times(batch))["loss"]

    def evaluate() -> float:
        with torch.no_grad():
            generated = to_uint8(work.generate_images(prompts, seed=0).images).permute(0, 2, 3, 1).cpu().numpy()
        ok = []
        for image, scene in zip(generated, scenes, strict=True):
            m = match_scene(parse_scene(image, cfg), scene)
            ok.append(m["count_correct"] and m["shape"] == 1.0 and m["color"] == 1.0)
        last["per_scene"] = [bool(x) for x in ok]
        return float(np.mean(ok))

    result = _fit(work, loss_fn, steps, lr, every, evaluate, target=1.0)
    return {**result, "prompts": prompts, "per_scene": last.get("per_scene"), "sampling": _sampler_settings(work)}


def steering_examples(cfg: SyntheticConfig) -> list[tuple[str, Scene]]:
    """1f's pairs: every "a <colour> <shape>" prompt of the world with one large solid object at the centre."""
    centre = cfg.image_size // 2
    return [
        (f"a {color} {shape}", Scene([SceneObject(shape, color, "large", centre, centre)], cfg.image_size))
        for color in cfg.colors
        for shape in cfg.shapes
    ]


def run_prompt_steering(stage: Any, cfg: SyntheticConfig, steps: int = 200, lr: float = 1e-3, every: int = 50) -> dict:
    """1f: fit the `steering_examples` (one batch of all of them) with the generation loss and score, per attribute,
    the share of samples with one object, the right shape and the right colour.

    Returns:
        {"prompts", "curve" (per evaluation: step, loss and the three shares with the stage's sampler settings),
        "final" (shape and colour right), "guidance_1" and "one_step" (the three shares at the end, at guidance 1 and
        for the one-step data estimate from noise at guidance 1), "sampling", "seconds"}.
    """
    items = steering_examples(cfg)
    work = _work_copy(stage, FLOW_TRAINABLE)
    builder = work.pipeline.builder
    images = torch.stack([_image(render(scene, cfg)) for _, scene in items])
    examples = [
        Example(f"steer_{i}", TASK_GENERATION, images[i], builder.generation(prompt), {"caption": prompt})
        for i, (prompt, _) in enumerate(items)
    ]
    batch = collate(examples, builder.ids["pad"])
    prompts = [prompt for prompt, _ in items]
    shares: list[dict[str, float]] = []

    def score(**sampling: Any) -> dict[str, float]:
        with torch.no_grad():
            generated = work.generate_images(prompts, seed=0, **sampling).images
        one, shape, color = [], [], []
        for image, (_, scene) in zip(to_uint8(generated).permute(0, 2, 3, 1).cpu().numpy(), items, strict=True):
            objects = parse_scene(image, cfg)
            match = match_scene(objects, scene)
            one.append(len(objects) == 1)
            shape.append(match["shape"] == 1.0)
            color.append(match["color"] == 1.0)
        return {"one_object": float(np.mean(one)), "shape": float(np.mean(shape)), "color": float(np.mean(color)),
                "both": float(np.mean([a and b for a, b in zip(shape, color, strict=True)]))}  # fmt: skip

    def evaluate() -> float:
        shares.append(score())
        return shares[-1]["both"]

    def loss_fn() -> torch.Tensor:
        return work.losses(batch, work._drop_condition(batch), work._flow_times(batch))["loss"]

    result = _fit(work, loss_fn, steps, lr, every, evaluate, target=1.01)
    curve = [{**point, **share} for point, share in zip(result["curve"], shares, strict=True)]
    return {
        "prompts": prompts,
        "curve": curve,
        "final": curve[-1]["both"],
        "guidance_1": score(guidance_scale=1.0),
        "one_step": score(num_steps=1, alpha=1.0, guidance_scale=1.0),
        "sampling": _sampler_settings(work),
        "seconds": result["seconds"],
    }
