"""Sample processing: image decoding and resizing per task, and the interleaved chat sequences of the three tasks.

Sequence layout (ChatML turns, DESIGN.md §1.2); `N` image positions per image block:
- understanding: user `<im_start><image>×N<im_end>\\n{question}`, assistant `{answer}<|im_end|>`
- generation:    user `{caption}`, assistant `<im_start><image_gen>×N<im_end><|im_end|>`
- text-only:     user `{prompt}`, assistant `{answer}<|im_end|>`
- packed understanding (training): the understanding prefix up to the image block once, then several
  `\n{question}<|im_end|>` + assistant `{answer}<|im_end|>` continuations, each its own segment (`segment_ids`
  k > 0): under the segment mask (`cheers_pl.model.attention_mask`) every answer sees the image and its own question
  only, at the positions of the single-question sequence, so one row trains k questions about one image for one
  vision pass.
Labels (aligned with the ids; the loss shifts them) are set on assistant tokens only. Image positions are never
targets, nor is the `<im_end>` that follows them (it would be predicted from an image position); `<im_start>` is a
target, which teaches the LM to switch to image mode.

`ProcessingConfig` holds where the released Cheers code formats differently (R14; `ProcessingConfig.official()`):
a system turn "You are a helpful assistant." before the user turn; its label rule (`label_rule="official"`: the
whole assistant turn, header included, plus every `\n`, `<|im_start|>`, `<|im_end|>`, `<im_start>` and `<no_mean>`
anywhere; image positions and `<im_end>` never); understanding images padded with black instead of mid-grey.
"""

import io
from dataclasses import dataclass, field, fields

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

LABEL_RULES = ("assistant", "official")
PAD_FILLS = {"grey": 0.0, "black": -1.0}  # pad values in [-1, 1]
OFFICIAL_SYSTEM_PROMPT = "You are a helpful assistant."


@dataclass
class ProcessingConfig:
    """How text and images become model inputs; defaults are native, `official()` the released code's."""

    system_prompt: str | None = None  # a system turn before the user turn (released: OFFICIAL_SYSTEM_PROMPT)
    label_rule: str = "assistant"  # a LABEL_RULES value (see the module docstring)
    pad_fill: str = "grey"  # a PAD_FILLS key: what pads understanding images to a square

    def __post_init__(self) -> None:
        if self.label_rule not in LABEL_RULES:
            raise ValueError(f"processing.label_rule must be one of {LABEL_RULES}, got {self.label_rule!r}")
        if self.pad_fill not in PAD_FILLS:
            raise ValueError(f"processing.pad_fill must be one of {sorted(PAD_FILLS)}, got {self.pad_fill!r}")

    @classmethod
    def official(cls) -> "ProcessingConfig":
        """The released Cheers code's template, labels and padding."""
        return cls(system_prompt=OFFICIAL_SYSTEM_PROMPT, label_rule="official", pad_fill="black")

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


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


def understanding_transform(img: Image.Image, size: int, fill: float = 0.0) -> torch.Tensor:
    """Resizes the longer side to `size` and pads to a square with `fill` (0 = mid-grey, −1 = black), keeping the
    whole image."""
    w, h = img.size
    scale = size / max(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    x = to_tensor(img.resize((new_w, new_h), Image.BICUBIC) if (new_w, new_h) != (w, h) else img)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    return TF.pad(x, [left, top, size - new_w - left, size - new_h - top], fill=fill)


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
    segment_ids: list[int] = field(default_factory=list)  # packed continuations (k > 0); empty = one segment

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class SequenceBuilder:
    """Builds the chat sequences of the three tasks with `num_image_tokens` positions per image block."""

    text_tokenizer: PreTrainedTokenizerBase
    num_image_tokens: int
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    ids: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        names = (IMAGE_TOKEN, IMAGE_GEN_TOKEN, IMAGE_START, IMAGE_END, NO_MEAN, TURN_START, TURN_END)
        self.ids = {n: self.text_tokenizer.convert_tokens_to_ids(n) for n in names}
        unknown = [n for n, i in self.ids.items() if i is None or i == self.text_tokenizer.unk_token_id]
        if unknown:
            raise ValueError(f"text tokenizer lacks the special tokens {unknown}; load it with load_text_tokenizer()")
        self.ids["pad"] = self.text_tokenizer.pad_token_id
        # the released template's always-targets: "\n" (one token in Qwen2.5: 198) and the turn / image markers
        self.always_targets = {*self._text("\n")[:1], *(self.ids[n] for n in (TURN_START, TURN_END, IMAGE_START))}
        self.always_targets.add(self.ids[NO_MEAN])

    def _text(self, text: str) -> list[int]:
        return self.text_tokenizer(text, add_special_tokens=False).input_ids

    def _turn_open(self, role: str) -> list[int]:
        return [self.ids[TURN_START], *self._text(f"{role}\n")]

    def _image_block(self, slot: str) -> list[int]:
        return [self.ids[IMAGE_START], *([self.ids[slot]] * self.num_image_tokens), self.ids[IMAGE_END]]

    def _label(self, token: int, kind: str) -> int:
        """The label of one token of a part of `kind` under the configured label rule."""
        if kind == "target":
            return token
        official = self.processing.label_rule == "official"
        if official and kind not in ("image", "image_end") and (kind == "assistant" or token in self.always_targets):
            return token
        return IGNORE_INDEX

    def _assemble(
        self, parts: list[tuple[list[int], str]], segment: int | None = None, seq: Sequence | None = None
    ) -> Sequence:
        """Concatenates (ids, kind) parts; kind ∈ {ctx, prompt, target, image, image_end, assistant} (`assistant`:
        the assistant turn's header and closing newline, targets under the official label rule only).

        Packed rows: `segment` labels the parts (0 = shared prefix, k > 0 = continuation k) and `seq` is the row
        they are appended to."""
        seq = Sequence([], [], [], []) if seq is None else seq
        for ids, kind in parts:
            seq.input_ids += ids
            seq.labels += [self._label(t, kind) for t in ids]
            seq.block_ids += [1 if kind == "image" else 0] * len(ids)
            seq.prompt_mask += [kind == "prompt"] * len(ids)
            if segment is not None:
                seq.segment_ids += [segment] * len(ids)
        return seq

    def _system_parts(self) -> list[tuple[list[int], str]]:
        if self.processing.system_prompt is None:
            return []
        opening = [self.ids[TURN_START], *self._text(f"system\n{self.processing.system_prompt}")]
        return [(opening, "ctx"), ([self.ids[TURN_END], *self._text("\n")], "ctx")]

    def _image_parts(self, slot: str, as_target: bool) -> list[tuple[list[int], str]]:
        block = self._image_block(slot)
        return [([block[0]], "target" if as_target else "ctx"), (block[1:-1], "image"), ([block[-1]], "image_end")]

    def _understanding_prefix(self) -> list[tuple[list[int], str]]:
        return [
            *self._system_parts(),
            (self._turn_open("user"), "ctx"),
            *self._image_parts(IMAGE_TOKEN, as_target=False),
        ]

    def _question_parts(self, question: str) -> list[tuple[list[int], str]]:
        return [
            (self._text("\n" + question), "prompt"),
            ([self.ids[TURN_END], *self._text("\n")], "ctx"),
            (self._turn_open("assistant"), "assistant"),
        ]

    def _understanding_parts(self, question: str) -> list[tuple[list[int], str]]:
        return [*self._understanding_prefix(), *self._question_parts(question)]

    def _generation_parts(self, caption: str) -> list[tuple[list[int], str]]:
        return [
            *self._system_parts(),
            (self._turn_open("user"), "ctx"),
            (self._text(caption), "prompt"),
            ([self.ids[TURN_END], *self._text("\n")], "ctx"),
            (self._turn_open("assistant"), "assistant"),
            *self._image_parts(IMAGE_GEN_TOKEN, as_target=True),
        ]

    def _answer_parts(self, answer: str) -> list[tuple[list[int], str]]:
        return [([*self._text(answer), self.ids[TURN_END]], "target"), (self._text("\n"), "assistant")]

    def understanding(self, question: str, answer: str) -> Sequence:
        """Image + question → answer; the image block sits before the question in the user turn."""
        return self._assemble([*self._understanding_parts(question), *self._answer_parts(answer)])

    def understanding_packed(self, qa: list[tuple[str, str]], max_len: int | None = None) -> Sequence:
        """Several (question, answer) pairs about one image in one row: the shared prefix (up to the image block),
        then one segment per pair, each equal to the tail of `understanding(question, answer)` (see the module
        docstring). Pairs that would take the row beyond `max_len` tokens are left out (at least one is kept).
        """
        if not qa:
            raise ValueError("understanding_packed needs at least one (question, answer) pair")
        seq = self._assemble(self._understanding_prefix(), segment=0)
        for k, (question, answer) in enumerate(qa, start=1):
            parts = [*self._question_parts(question), *self._answer_parts(answer)]
            if k > 1 and max_len is not None and len(seq) + sum(len(ids) for ids, _ in parts) > max_len:
                break
            self._assemble(parts, segment=k, seq=seq)
        return seq

    def generation(self, caption: str) -> Sequence:
        """Caption → image; `<im_start>` and the closing `<|im_end|>` are targets, the image block is not."""
        return self._assemble(
            [*self._generation_parts(caption), ([self.ids[TURN_END]], "target"), (self._text("\n"), "assistant")]
        )

    def text(self, prompt: str, answer: str) -> Sequence:
        """Text-only turn: prompt → answer."""
        return self._assemble(
            [
                *self._system_parts(),
                (self._turn_open("user"), "ctx"),
                (self._text(prompt), "prompt"),
                ([self.ids[TURN_END], *self._text("\n")], "ctx"),
                (self._turn_open("assistant"), "assistant"),
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

    def edit_prompt(self, instruction: str) -> Sequence:
        """Zero-shot editing (the released code's mode): the understanding prompt of the source image (block 1) and
        the instruction, then `<im_start>`; the sampler appends the generated image block (block 2) after it."""
        return self._assemble([*self._understanding_parts(instruction), ([self.ids[IMAGE_START]], "target")])
