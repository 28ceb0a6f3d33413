"""Text tokenizer: special tokens, chat template, save/load (cheers_pl/data/text_tokenizer.py)."""

from pathlib import Path

import pytest

from cheers_pl.data.text_tokenizer import (
    CHEERS_SPECIAL_TOKENS,
    TURN_END,
    load_text_tokenizer,
    save_text_tokenizer,
    train_text_tokenizer,
)

CORPUS = ["a red striped circle on the left", "how many objects are there? three", "two blue squares"] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_text_tokenizer(CORPUS, vocab_size=300)


def test_special_tokens_are_single_ids(tokenizer) -> None:
    for tok in CHEERS_SPECIAL_TOKENS:
        ids = tokenizer(tok, add_special_tokens=False).input_ids
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == tok
    assert len(set(tokenizer.convert_tokens_to_ids(list(CHEERS_SPECIAL_TOKENS)))) == len(CHEERS_SPECIAL_TOKENS)
    assert tokenizer.eos_token == TURN_END and tokenizer.pad_token_id is not None
    assert tokenizer.padding_side == "left"


def test_round_trip_is_lossless_even_for_unseen_words(tokenizer) -> None:
    text = "a zebra-like Digit 7, on the far RIGHT!"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_chat_template_format(tokenizer) -> None:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"


def test_save_and_load(tokenizer, tmp_path: Path) -> None:
    save_text_tokenizer(tokenizer, tmp_path)
    loaded = load_text_tokenizer(str(tmp_path))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded("two blue squares").input_ids == tokenizer("two blue squares").input_ids
    assert loaded.chat_template == tokenizer.chat_template


def test_missing_tokenizer_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no_tokenizer_here"):
        load_text_tokenizer(str(tmp_path / "no_tokenizer_here"))
