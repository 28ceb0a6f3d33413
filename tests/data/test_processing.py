"""Image decoding/resizing and chat-sequence building (cheers_pl/data/processing.py)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cheers_pl.data.processing import (
    PAD_FILLS,
    ProcessingConfig,
    SequenceBuilder,
    decode_image,
    generation_transform,
    understanding_transform,
)
from cheers_pl.data.text_tokenizer import train_text_tokenizer
from cheers_pl.objective.lm import IGNORE_INDEX

N = 4


@pytest.fixture(scope="module")
def builder() -> SequenceBuilder:
    tok = train_text_tokenizer(["describe the image a red circle how many objects two"] * 20, vocab_size=300)
    return SequenceBuilder(tok, num_image_tokens=N)


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_modes_are_converted_to_rgb() -> None:
    gray = np.full((8, 8), 200, np.uint8)
    img, mode = decode_image(_png(gray))
    assert img.mode == "RGB" and mode == "L" and np.asarray(img)[0, 0].tolist() == [200, 200, 200]
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent → white
    img, mode = decode_image(_png(rgba))
    assert mode == "RGBA" and np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    sixteen = np.full((8, 8), 65535, np.uint16)
    img, mode = decode_image(_png(sixteen))
    assert mode.startswith("I") and np.asarray(img)[0, 0].tolist() == [255, 255, 255]
    pal = Image.new("P", (8, 8))
    pal.putpalette([10, 20, 30] * 256)
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    img, mode = decode_image(buf.getvalue())
    assert mode == "P" and np.asarray(img)[0, 0].tolist() == [10, 20, 30]


def test_bad_bytes_raise_value_error() -> None:
    with pytest.raises(ValueError, match="zero-byte"):
        decode_image(b"")
    with pytest.raises(ValueError, match="undecodable"):
        decode_image(b"not an image at all")


def test_understanding_pads_and_generation_crops() -> None:
    wide = Image.fromarray(np.full((32, 64, 3), 255, np.uint8))
    und = understanding_transform(wide, 16)
    assert und.shape == (3, 16, 16)
    assert torch.all(und[:, 0] == 0.0) and torch.all(und[:, 8] == 1.0)  # padded rows are mid-grey (0)
    gen = generation_transform(wide, 16)
    assert gen.shape == (3, 16, 16) and torch.all(gen == 1.0)  # the crop is all image


def _decode(builder: SequenceBuilder, ids: list[int]) -> str:
    return builder.text_tokenizer.decode(ids)


def test_understanding_sequence_matches_chat_template_and_labels(builder: SequenceBuilder) -> None:
    seq = builder.understanding("how many objects?", "two")
    image = "<im_start>" + "<image>" * N + "<im_end>"
    expected = builder.text_tokenizer.apply_chat_template(
        [{"role": "user", "content": image + "\nhow many objects?"}, {"role": "assistant", "content": "two"}],
        tokenize=False,
    )
    assert _decode(builder, seq.input_ids) == expected
    targets = [t for t, lab in zip(seq.input_ids, seq.labels, strict=True) if lab != IGNORE_INDEX]
    assert _decode(builder, targets) == "two<|im_end|>"
    assert sum(seq.block_ids) == N and all(
        b == (t == builder.ids["<image>"]) for t, b in zip(seq.input_ids, seq.block_ids, strict=True)
    )
    assert _decode(builder, [t for t, m in zip(seq.input_ids, seq.prompt_mask, strict=True) if m]) == (
        "\nhow many objects?"
    )


def test_generation_sequence_labels_im_start_but_not_image(builder: SequenceBuilder) -> None:
    seq = builder.generation("a red circle")
    ids, labels = seq.input_ids, seq.labels
    start = ids.index(builder.ids["<im_start>"])
    assert labels[start] == builder.ids["<im_start>"]  # the LM learns to switch to image mode
    for i, b in enumerate(seq.block_ids):
        if b:
            assert labels[i] == IGNORE_INDEX and ids[i] == builder.ids["<image_gen>"]
    end = ids.index(builder.ids["<im_end>"])
    assert labels[end] == IGNORE_INDEX and labels[end + 1] == builder.ids["<|im_end|>"]
    assert _decode(builder, [t for t, m in zip(ids, seq.prompt_mask, strict=True) if m]) == "a red circle"


def test_prompts_are_prefixes(builder: SequenceBuilder) -> None:
    full = builder.generation("a red circle")
    prompt = builder.generation_prompt("a red circle")
    assert full.input_ids[: len(prompt)] == prompt.input_ids and prompt.input_ids[-1] == builder.ids["<im_start>"]
    und = builder.understanding("how many objects?", "two")
    und_prompt = builder.understanding_prompt("how many objects?")
    assert und.input_ids[: len(und_prompt)] == und_prompt.input_ids
    assert _decode(builder, und_prompt.input_ids).endswith("<|im_start|>assistant\n")


def test_missing_special_tokens_is_an_error() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    plain.unk_token = "[UNK]"
    with pytest.raises(ValueError, match="special tokens"):
        SequenceBuilder(plain, num_image_tokens=N)


OFFICIAL_TEMPLATE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "official" / "qwen2.5_tokenizer" / "tokenizer_config.json"
)
SPECIAL = {"<image>": 151665, "<image_gen>": 151666, "<im_start>": 151667, "<im_end>": 151668, "<no_mean>": 151669}


def _official_training_ids(tok, messages: list[dict], n: int) -> tuple[list[int], list[int]]:
    """The released training template (`rae_qwen`), written out from its description: the system turn through
    Qwen's own template, then `<|im_start|>{role}\\n{content.strip()}<|im_end|>\\n` per message; labels = the
    assistant messages' tokens plus every `\\n` (198), `<|im_start|>`, `<|im_end|>`, `<im_start>`, `<im_end>`,
    `<no_mean>`; then the single `<image>` / `<image_gen>` expanded to n positions (never targets) and `<im_end>`
    not a target (the released loss shifts it out)."""
    qwen_template = json.loads(OFFICIAL_TEMPLATE.read_text())["chat_template"]
    system = [{"role": "system", "content": "You are a helpful assistant."}]
    ids = tok(tok.apply_chat_template(system, chat_template=qwen_template, tokenize=False), add_special_tokens=False)
    ids, labels = list(ids.input_ids), [IGNORE_INDEX] * len(ids.input_ids)
    for m in messages:
        part = tok(f"<|im_start|>{m['role']}\n{m['content'].strip()}<|im_end|>\n", add_special_tokens=False).input_ids
        ids += part
        labels += part if m["role"] == "assistant" else [IGNORE_INDEX] * len(part)
    always = {198, 151644, 151645, 151667, 151668, 151669}
    labels = [t if t in always else lab for t, lab in zip(ids, labels, strict=True)]
    out_ids, out_labels = [], []
    for t, lab in zip(ids, labels, strict=True):
        count = n if t in (SPECIAL["<image>"], SPECIAL["<image_gen>"]) else 1
        out_ids += [t] * count
        never = (SPECIAL["<image>"], SPECIAL["<image_gen>"], SPECIAL["<im_end>"])
        out_labels += [IGNORE_INDEX if t in never else lab] * count
    return out_ids, out_labels


def test_real_qwen_tokenizer_gets_the_released_special_token_ids(qwen_tokenizer) -> None:
    assert {t: qwen_tokenizer.convert_tokens_to_ids(t) for t in SPECIAL} == SPECIAL
    assert len(qwen_tokenizer) == 151670 and qwen_tokenizer.pad_token_id == 151643


def test_official_template_and_labels_token_for_token(qwen_tokenizer) -> None:
    """With ProcessingConfig.official() our sequences equal the released training template, labels included."""
    builder = SequenceBuilder(qwen_tokenizer, N, ProcessingConfig.official())
    und = builder.understanding("What is this?", "A red apple.")
    want = _official_training_ids(qwen_tokenizer, [
        {"role": "user", "content": "<im_start><image><im_end>\nWhat is this?"},
        {"role": "assistant", "content": "A red apple."},
    ], N)  # fmt: skip
    assert (und.input_ids, und.labels) == want
    gen = builder.generation("An apple.\nBased on the above description, generate an image.")
    want = _official_training_ids(qwen_tokenizer, [
        {"role": "user", "content": "An apple.\nBased on the above description, generate an image."},
        {"role": "assistant", "content": "<im_start><image_gen><im_end>"},
    ], N)  # fmt: skip
    assert (gen.input_ids, gen.labels) == want
    native = SequenceBuilder(qwen_tokenizer, N).understanding("What is this?", "A red apple.")
    assert native.input_ids != und.input_ids and native.labels != und.labels[-len(native.labels) :]


def test_official_inference_prompts_are_the_released_chat_template(qwen_tokenizer) -> None:
    """`answer` / `generate` prompts = Qwen's template with its default system turn and the generation prompt
    (+ `<im_start>` for text-to-image, as the released processor appends it)."""
    qwen_template = json.loads(OFFICIAL_TEMPLATE.read_text())["chat_template"]

    def official(content: str) -> list[int]:
        text = qwen_tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], chat_template=qwen_template, tokenize=False,
            add_generation_prompt=True,
        )  # fmt: skip
        return qwen_tokenizer(text, add_special_tokens=False).input_ids

    builder = SequenceBuilder(qwen_tokenizer, 1, ProcessingConfig.official())
    assert builder.understanding_prompt("Describe this image.").input_ids == official(
        "<im_start><image><im_end>\nDescribe this image."
    )
    assert builder.generation_prompt("a red fox").input_ids == [*official("a red fox"), SPECIAL["<im_start>"]]
    assert builder.edit_prompt("make it blue").input_ids == [
        *official("<im_start><image><im_end>\nmake it blue"),
        SPECIAL["<im_start>"],
    ]


def test_black_padding_option() -> None:
    wide = Image.fromarray(np.full((32, 64, 3), 255, np.uint8))
    und = understanding_transform(wide, 16, fill=PAD_FILLS["black"])
    assert torch.all(und[:, 0] == -1.0) and torch.all(und[:, 8] == 1.0)
    with pytest.raises(ValueError, match="pad_fill"):
        ProcessingConfig(pad_fill="white")
    with pytest.raises(ValueError, match="label_rule"):
        ProcessingConfig(label_rule="everything")


def test_packed_understanding_segments_are_the_single_question_tails(builder: SequenceBuilder) -> None:
    qa = [("how many objects?", "two"), ("describe the image", "a red circle"), ("what color?", "red")]
    packed = builder.understanding_packed(qa)
    prefix = builder._assemble(builder._understanding_prefix())
    assert packed.input_ids[: len(prefix)] == prefix.input_ids and set(packed.segment_ids[: len(prefix)]) == {0}
    for k, (q, a) in enumerate(qa, start=1):
        single = builder.understanding(q, a)
        cols = [i for i, s in enumerate(packed.segment_ids) if s == k]
        assert cols == list(range(cols[0], cols[-1] + 1))  # one contiguous segment per pair
        tail = slice(len(prefix), None)
        assert [packed.input_ids[i] for i in cols] == single.input_ids[tail]
        assert [packed.labels[i] for i in cols] == single.labels[tail]
        assert [packed.prompt_mask[i] for i in cols] == single.prompt_mask[tail]
    # pairs beyond max_len are left out, the first is always kept
    one = builder.understanding_packed(qa, max_len=len(builder.understanding(*qa[0])) + 1)
    assert max(one.segment_ids) == 1 and one.input_ids == builder.understanding(*qa[0]).input_ids
    with pytest.raises(ValueError, match="at least one"):
        builder.understanding_packed([])
