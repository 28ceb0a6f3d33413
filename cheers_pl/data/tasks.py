"""Turns a raw shard sample into one training example of a task drawn from the configured mixture.

Tasks (DESIGN.md §2): understanding (image + question → answer, or image → caption), generation (caption → image),
text-only (caption + question → answer, no image). Samples without QA metadata (plain img2dataset shards) still
serve every task through their caption.
"""

import json
import random
from dataclasses import dataclass

import torch

from cheers_pl.data.batch import Example
from cheers_pl.data.processing import (
    PAD_FILLS,
    SequenceBuilder,
    decode_image,
    generation_transform,
    understanding_transform,
)
from cheers_pl.data.webdataset import IMAGE_EXTENSIONS, EventCounter, SkipSample

# `Batch.task` values: the one definition of the task ids
TASK_UNDERSTANDING, TASK_GENERATION, TASK_TEXT = 0, 1, 2
TASK_NAMES = ("understanding", "generation", "text")
CAPTION_QUESTION = "Describe the image."
TEXT_CAPTION_PROMPT = "Write a caption for a picture."


@dataclass
class TaskWeights:
    """Relative weights of the three tasks (paper's joint mixture und : gen : text = 3 : 6 : 1)."""

    understanding: float = 3.0
    generation: float = 6.0
    text: float = 1.0

    def __post_init__(self) -> None:
        values = self.as_tuple()
        if any(w < 0 for w in values) or sum(values) <= 0:
            raise ValueError(f"data.task_weights must be non-negative with a positive sum, got {values}")

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.understanding, self.generation, self.text)


def _field(raw: dict, *names: str) -> bytes | None:
    for n in names:
        if n in raw:
            return raw[n]
    return None


def parse_raw(raw: dict) -> tuple[bytes, str, dict]:
    """Extracts (image bytes, caption, metadata) from a raw sample.

    Raises:
        SkipSample: missing image, caption or metadata, or undecodable caption/metadata.
    """
    image = _field(raw, *IMAGE_EXTENSIONS)
    if image is None:
        raise SkipSample("missing_image", raw.get("__key__", "?"))
    caption_bytes = _field(raw, "txt")
    if caption_bytes is None:
        raise SkipSample("missing_caption", raw.get("__key__", "?"))
    meta_bytes = _field(raw, "json")
    if meta_bytes is None:
        raise SkipSample("missing_metadata", raw.get("__key__", "?"))
    try:
        caption = caption_bytes.decode("utf-8").strip()
        meta = json.loads(meta_bytes.decode("utf-8")) if meta_bytes else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SkipSample("bad_text_or_metadata", f"{raw.get('__key__', '?')}: {err}") from err
    if not caption:
        raise SkipSample("missing_caption", f"{raw.get('__key__', '?')} (empty)")
    if not isinstance(meta, dict):
        raise SkipSample("missing_metadata", f"{raw.get('__key__', '?')} (not a JSON object)")
    return image, caption, meta


@dataclass
class ExampleFactory:
    """Builds `Example`s from raw samples; one per raw sample, with the task drawn from `weights`."""

    builder: SequenceBuilder
    image_size: int
    weights: TaskWeights
    max_seq_len: int
    qa_per_example: int = 1  # understanding: questions packed per image row (`DataConfig.qa_per_example`)
    pack_caption: bool = False  # packed rows always include the caption request (`DataConfig.pack_caption`)

    def _image(self, data: bytes, task: int, counter: EventCounter) -> torch.Tensor:
        try:
            img, converted_from = decode_image(data)
        except ValueError as err:
            reason = "zero_byte_image" if len(data) == 0 else "undecodable_image"
            raise SkipSample(reason, str(err)) from err
        if converted_from is not None:
            counter.add(f"convert/{converted_from}")
        if task == TASK_GENERATION:
            return generation_transform(img, self.image_size)
        return understanding_transform(img, self.image_size, fill=PAD_FILLS[self.builder.processing.pad_fill])

    def __call__(self, raw: dict, rng: random.Random, counter: EventCounter, task: int | None = None) -> Example:
        """Processes one raw sample (a task is drawn unless given).

        Raises:
            SkipSample: for a bad sample (the caller counts it).
        """
        image_bytes, caption, meta = parse_raw(raw)
        if task is None:
            task = rng.choices((TASK_UNDERSTANDING, TASK_GENERATION, TASK_TEXT), weights=self.weights.as_tuple())[0]
        qa = [q for q in meta.get("qa", []) if isinstance(q, dict) and "question" in q and "answer" in q]
        info = {"caption": caption, "task": TASK_NAMES[task]}
        if task != TASK_TEXT and isinstance(meta.get("scene"), dict):
            info["scene"] = meta["scene"]  # synthetic shards: the exact scene (token-attribute labels)
        if task == TASK_GENERATION:
            captions = [c for c in meta.get("captions", []) if isinstance(c, str) and c] or [caption]
            prompt = rng.choice(captions)
            sequence, info["caption"] = self.builder.generation(prompt), prompt
        elif task == TASK_UNDERSTANDING:
            pool = [*qa, {"question": CAPTION_QUESTION, "answer": caption, "category": "caption"}]
            if self.qa_per_example == 1:
                q = rng.choice(pool)
                sequence = self.builder.understanding(q["question"], str(q["answer"]))
            else:
                if self.pack_caption:
                    picked = [pool[-1], *rng.sample(pool[:-1], min(self.qa_per_example - 1, len(pool) - 1))]
                    rng.shuffle(picked)
                else:
                    picked = rng.sample(pool, min(self.qa_per_example, len(pool)))
                pairs = [(p["question"], str(p["answer"])) for p in picked]
                sequence, q = self.builder.understanding_packed(pairs, max_len=self.max_seq_len), picked[0]
            info.update(question=q["question"], answer=str(q["answer"]), category=q.get("category", "other"))
        else:
            if qa:
                q = rng.choice(qa)
                sequence = self.builder.text(f"{caption} {q['question']}", str(q["answer"]))
            else:
                sequence = self.builder.text(TEXT_CAPTION_PROMPT, caption)
        if len(sequence) > self.max_seq_len:
            raise SkipSample("too_long", f"{raw.get('__key__', '?')}: {len(sequence)} > data.max_seq_len")
        if task == TASK_TEXT:
            image = torch.zeros(3, self.image_size, self.image_size)
        else:
            image = self._image(image_bytes, task, counter)
        return Example(key=raw.get("__key__", "?"), task=task, image=image, sequence=sequence, meta=info)
