"""Raw samples → Examples (cheers_pl/data/tasks.py) with the released processing, through the data config."""

import io
import json
import random

import numpy as np
import torch
from PIL import Image

from cheers_pl.config import compose
from cheers_pl.data.processing import ProcessingConfig, SequenceBuilder
from cheers_pl.data.tasks import TASK_GENERATION, TASK_UNDERSTANDING, ExampleFactory, TaskWeights
from cheers_pl.data.webdataset import EventCounter
from cheers_pl.objective.lm import IGNORE_INDEX


def _raw() -> dict:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 64, 3), 255, np.uint8)).save(buf, format="PNG")  # wide: padded for understanding
    meta = {"qa": [{"question": "What is this?", "answer": "A white box."}]}
    return {"__key__": "k0", "png": buf.getvalue(), "txt": b"a white box", "json": json.dumps(meta).encode()}


def test_official_processing_reaches_examples(qwen_tokenizer) -> None:
    """data.processing: the system turn and the released label rule in the sequences, black padding in the image."""
    cfg = compose("align_1p5b", ["data.processing.system_prompt=You are a helpful assistant.",
                                 "data.processing.label_rule=official", "data.processing.pad_fill=black"])  # fmt: skip
    assert cfg.data.processing == ProcessingConfig.official()
    builder = SequenceBuilder(qwen_tokenizer, 4, cfg.data.processing)
    factory = ExampleFactory(builder, 16, TaskWeights(), max_seq_len=128)
    und = factory(_raw(), random.Random(0), EventCounter(), task=TASK_UNDERSTANDING)
    text = qwen_tokenizer.decode(und.sequence.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert torch.all(und.image[:, 0] == -1.0) and torch.all(und.image[:, 8] == 1.0)
    assert und.sequence.labels[0] == 151644  # <|im_start|> is a target everywhere under the released rule
    gen = factory(_raw(), random.Random(0), EventCounter(), task=TASK_GENERATION)
    assert torch.all(gen.image == 1.0)  # generation targets are cropped, never padded
    native = ExampleFactory(SequenceBuilder(qwen_tokenizer, 4), 16, TaskWeights(), max_seq_len=128)
    und_native = native(_raw(), random.Random(0), EventCounter(), task=TASK_UNDERSTANDING)
    assert torch.all(und_native.image[:, 0] == 0.0) and und_native.sequence.labels[0] == IGNORE_INDEX


def _raw_qa(n: int) -> dict:
    raw = _raw()
    meta = {"qa": [{"question": f"question {i}?", "answer": f"answer{i}", "category": "count"} for i in range(n)],
            "scene": {"image_size": 64, "objects": []}}  # fmt: skip
    raw["json"] = json.dumps(meta).encode()
    return raw


def test_packed_understanding_rows_hold_several_questions_and_the_caption_when_asked(qwen_tokenizer) -> None:
    builder = SequenceBuilder(qwen_tokenizer, 4)
    packed = ExampleFactory(builder, 16, TaskWeights(), max_seq_len=512, qa_per_example=3)
    ex = packed(_raw_qa(5), random.Random(0), EventCounter(), task=TASK_UNDERSTANDING)
    assert max(ex.sequence.segment_ids) == 3 and ex.meta["question"] in qwen_tokenizer.decode(ex.sequence.input_ids)
    assert ex.meta["scene"] == {"image_size": 64, "objects": []}  # the scene travels for token-attribute labels
    with_caption = ExampleFactory(builder, 16, TaskWeights(), max_seq_len=512, qa_per_example=2, pack_caption=True)
    for seed in range(5):
        ex = with_caption(_raw_qa(5), random.Random(seed), EventCounter(), task=TASK_UNDERSTANDING)
        text = qwen_tokenizer.decode(ex.sequence.input_ids)
        assert "Describe the image." in text and "a white box" in text and max(ex.sequence.segment_ids) == 2
    single = ExampleFactory(builder, 16, TaskWeights(), max_seq_len=512)
    assert not single(_raw_qa(5), random.Random(0), EventCounter(), task=TASK_UNDERSTANDING).sequence.segment_ids
    # a row that would grow past max_seq_len keeps fewer questions, never fewer than one
    short = ExampleFactory(builder, 16, TaskWeights(), max_seq_len=48, qa_per_example=5)
    assert max(short(_raw_qa(5), random.Random(0), EventCounter(), task=TASK_UNDERSTANDING).sequence.segment_ids) < 5
