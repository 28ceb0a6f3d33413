"""Sample processing: image decoding and resizing per task, and the interleaved chat sequences of the three tasks.

Sequence layout (ChatML turns, DESIGN.md §1.2); `N` image positions per image block:
- understanding: user `<im_start><image>×N<im_end>\\n{question}`, assistant `{answer}<|im_end|>`
- generation:    user `{caption}`, assistant `<im_start><image_gen>×N<im_end><|im_end|>`
- text-only:     user `{prompt}`, assistant `{answer}<|im_end|>`
Labels (aligned with the ids; the loss shifts them) are set on assistant tokens only. Image positions are never
targets, nor is the `<im_end>` that follows them (it would be predicted from an image position); `<im_start>` is a
target, which teaches the LM to switch to image mode.
"""

import io
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from transformers import PreTrainedTokenizerBase

from cheers_pl.data.text_tokenizer import (
    IMAGE_END,
    IMAGE_GEN_TOKEN,
    IMAGE_START,
    IMAGE_TOKEN,
    NO_MEAN,
    TURN_END,
    TURN_START,
)
from cheers_pl.objective.lm import IGNORE_INDEX


def decode_image(data: bytes) -> tuple[Image.Image, str | None]:
    """Decodes image bytes to RGB; returns the image and the original mode when it had to be converted.

    Grayscale, 16-bit, palette and alpha images are converted (alpha is composited on white).

    Raises:
        ValueError: for empty or undecodable bytes.
    """
    if len(data) == 0:
        raise ValueError("zero-byte image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as err:  # PIL raises several unrelated types for corrupt files
        raise ValueError(f"undecodable image: {err}") from err
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    return img.convert("RGB"), mode


def to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB → float tensor 3×H×W in [-1, 1]."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
    return arr.float().div(127.5).sub(1.0)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → float32 in [0, 1], clamped (the inverse of `to_tensor`'s scaling)."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → uint8 in [0, 255], rounded (same layout, e.g. B×3×H×W)."""
    return (to_unit(images) * 255).round().to(torch.uint8)


def understanding_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resizes the longer side to `size` and pads to a square (pad value 0 = mid-grey), keeping the whole image."""
    w, h = img.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    x = to_tensor(img.resize((new_w, new_h), Image.BICUBIC) if (new_w, new_h) != (w, h) else img)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return TF.pad(x, [left, top, size - new_w - left, size - new_h - top], fill=0.0)


def generation_transform(img: Image.Image, size: int) -> torch.Tensor:
    """Resizes the shorter side to `size` and centre-crops a square (the target fills the frame)."""
    w, h = img.size
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    return TF.center_crop(to_tensor(img), [size, size])


@dataclass
class Sequence:
    """One tokenised training sequence (length L): ids, labels, image-block ids (0 = text), prompt mask."""

    input_ids: list[int]
    labels: list[int]
    block_ids: list[int]
    prompt_mask: list[bool]  # user-prompt text tokens: replaced by `<no_mean>` for classifier-free guidance

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SequenceBuilder:
    """Builds the chat sequences of the three tasks with `num_image_tokens` positions per image block."""

    text_tokenizer: PreTrainedTokenizerBase
    num_image_tokens: int
    ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        names = (IMAGE_TOKEN, IMAGE_GEN_TOKEN, IMAGE_START, IMAGE_END, NO_MEAN, TURN_START, TURN_END)
        self.ids = {n: self.text_tokenizer.convert_tokens_to_ids(n) for n in names}
        unknown = [n for n, i in self.ids.items() if i is None or i == self.text_tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"text tokenizer lacks the special tokens {unknown}; load it with load_text_tokenizer()")
        self.ids["pad"] = self.text_tokenizer.pad_token_id

    def _text(self, text: str) -> list[int]:
        return self.text_tokenizer(text, add_special_tokens=False).input_ids

    def _turn_open(self, role: str) -> list[int]:
        return [self.ids[TURN_START], *self._text(f"{role}\n")]

    def _image_block(self, slot: str) -> list[int]:
        return [self.ids[IMAGE_START], *([self.ids[slot]] * self.num_image_tokens), self.ids[IMAGE_END]]

    def _assemble(self, parts: list[tuple[list[int], str]]) -> Sequence:
        """Concatenates (ids, kind) parts; kind ∈ {ctx, prompt, target, image, image_end}."""
        seq = Sequence([], [], [], [])
        for ids, kind in parts:
            seq.input_ids += ids
            seq.labels += ids if kind == "target" else [IGNORE_INDEX] * len(ids)
            seq.block_ids += [1 if kind == "image" else 0] * len(ids)
            seq.prompt_mask += [kind == "prompt"] * len(ids)
        return seq

    def _image_parts(self, slot: str, as_target: bool) -> list[tuple[list[int], str]]:
        block = self._image_block(slot)
        return [([block[0]], "target" if as_target else "ctx"), (block[1:-1], "image"), ([block[-1]], "ctx")]

    def _understanding_parts(self, question: str) -> list[tuple[list[int], str]]:
        return [
            (self._turn_open("user"), "ctx"),
            *self._image_parts(IMAGE_TOKEN, as_target=False),
            (self._text("\n" + question), "prompt"),
            ([self.ids[TURN_END], *self._text("\n")], "ctx"),
            (self._turn_open("assistant"), "ctx"),
        ]

    def _generation_parts(self, caption: str) -> list[tuple[list[int], str]]:
        return [
            (self._turn_open("user"), "ctx"),
            (self._text(caption), "prompt"),
            ([self.ids[TURN_END], *self._text("\n")], "ctx"),
            (self._turn_open("assistant"), "ctx"),
            *self._image_parts(IMAGE_GEN_TOKEN, as_target=True),
        ]

    def _answer_parts(self, answer: str) -> list[tuple[list[int], str]]:
        return [([*self._text(answer), self.ids[TURN_END]], "target"), (self._text("\n"), "ctx")]

    def understanding(self, question: str, answer: str) -> Sequence:
        """Image + question → answer; the image block sits before the question in the user turn."""
        return self._assemble([*self._understanding_parts(question), *self._answer_parts(answer)])

    def generation(self, caption: str) -> Sequence:
        """Caption → image; `<im_start>` and the closing `<|im_end|>` are targets, the image block is not."""
        return self._assemble(
            [*self._generation_parts(caption), ([self.ids[TURN_END]], "target"), (self._text("\n"), "ctx")]
        )

    def text(self, prompt: str, answer: str) -> Sequence:
        """Text-only turn: prompt → answer."""
        return self._assemble(
            [
                (self._turn_open("user"), "ctx"),
                (self._text(prompt), "prompt"),
                ([self.ids[TURN_END], *self._text("\n")], "ctx"),
                (self._turn_open("assistant"), "ctx"),
                *self._answer_parts(answer),
            ]
        )

    def understanding_prompt(self, question: str) -> Sequence:
        """The understanding sequence up to the assistant header: the prefix that `answer()` decodes from."""
        return self._assemble(self._understanding_parts(question))

    def generation_prompt(self, caption: str) -> Sequence:
        """The generation sequence up to and including `<im_start>`: the prompt whose KV cache the sampler reuses.

        The sampler appends the `num_image_tokens` image positions (one bidirectional block) after it.
        """
        return self._assemble(self._generation_parts(caption)[:-2])
