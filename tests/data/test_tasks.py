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
