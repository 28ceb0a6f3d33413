"""Image decoding/resizing and chat-sequence building (cheers_pl/data/processing.py)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cheers_pl.data.processing import SequenceBuilder, decode_image, generation_transform, understanding_transform
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
