"""Text tokenizer: a `transformers.PreTrainedTokenizerFast` with Cheers' special tokens and one chat template.

The tiny preset trains a small byte-level BPE with the `tokenizers` library on the synthetic world's vocabulary and
saves it next to the shards; the full-size preset loads Qwen2.5's tokenizer from a local path or hub name. Both get
the same special tokens and the same ChatML-style template (Qwen's), so the sequence builder in `processing.py`
never branches on the preset.
"""

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Image-block tokens of the paper (DESIGN.md §1.2); `<no_mean>` is the blank token for classifier-free guidance.
IMAGE_TOKEN = "<image>"
IMAGE_GEN_TOKEN = "<image_gen>"
IMAGE_START = "<im_start>"
IMAGE_END = "<im_end>"
NO_MEAN = "<no_mean>"
CHEERS_SPECIAL_TOKENS = (IMAGE_TOKEN, IMAGE_GEN_TOKEN, IMAGE_START, IMAGE_END, NO_MEAN)

# Chat-turn markers and padding as in Qwen2.5, so a pretrained Qwen tokenizer already has them.
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def add_cheers_tokens(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Adds the image/guidance special tokens, turn markers, padding and the chat template (idempotent)."""
    missing_turn = [t for t in (TURN_START, TURN_END, PAD_TOKEN) if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [*missing_turn, *CHEERS_SPECIAL_TOKENS]}, replace_extra_special_tokens=False
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD_TOKEN
    tokenizer.eos_token = TURN_END
    tokenizer.padding_side = "left"  # decoding appends new tokens in the same column for every row
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def train_text_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Trains a byte-level BPE (lossless round-trip of any text) on `texts` and adds the Cheers tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[PAD_TOKEN, TURN_START, TURN_END],
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    return add_cheers_tokens(fast)


def load_text_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Loads a tokenizer from a local directory or hub name and adds the Cheers tokens.

    Raises:
        ValueError: if `name_or_path` is neither a local tokenizer directory nor a reachable hub name.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"text tokenizer {name_or_path!r}: not a local tokenizer directory and not loadable from the hub "
            f"({err.__class__.__name__}). Run `make data-synthetic` for the tiny preset, or point "
            "`data.text_tokenizer` at a directory saved with `save_pretrained`."
        ) from err
    return add_cheers_tokens(tokenizer)


def save_text_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """Saves the tokenizer (and its chat template) with `save_pretrained`."""
    tokenizer.save_pretrained(str(directory))


def vocab_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the token → id map: equal fingerprints mean the same ids for every text."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
