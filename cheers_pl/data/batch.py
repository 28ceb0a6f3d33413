"""The typed training batch and its collation (left padding).

Legend: B batch, L sequence length, H/W image size.
"""

from collections import Counter
from dataclasses import dataclass, field, fields

import torch

from cheers_pl.data.processing import Sequence
from cheers_pl.objective.lm import IGNORE_INDEX


@dataclass
class Example:
    """One processed sample before collation."""

    key: str
    task: int
    image: torch.Tensor  # 3×H×W in [-1, 1]; zeros for text-only examples
    sequence: Sequence
    meta: dict = field(default_factory=dict)  # question / answer / category / caption for evaluation callbacks
    events: dict[str, int] = field(default_factory=dict)  # "skip/<reason>", "convert/<mode>" since the last example
    cursor: tuple[int, ...] | None = None  # training streams: (worker, *resume Cursor) after this example


@dataclass
class Batch:
    """A collated batch; Lightning moves every tensor field to the device (`apply_to_collection` on dataclasses).

    Sequences are LEFT-padded so that batched decoding appends new tokens in the same column for every row.
    """

    images: torch.Tensor  # B×3×H×W float in [-1, 1]
    task: torch.Tensor  # B long: 0 understanding, 1 generation, 2 text-only
    input_ids: torch.Tensor  # B×L long
    labels: torch.Tensor  # B×L long, IGNORE_INDEX where not a target (aligned with input_ids; the loss shifts)
    pad_mask: torch.Tensor  # B×L bool, True for real tokens
    block_ids: torch.Tensor  # B×L long, 0 for text, 1 inside the sample's image block
    prompt_mask: torch.Tensor  # B×L bool, user-prompt text tokens (replaced by `<no_mean>` for guidance dropout)
    keys: list[str]
    meta: list[dict]
    events: dict[str, int]  # data events in the workers since the previous batch: "skip/<reason>", "convert/<mode>"
    cursor: tuple[int, ...] | None = None  # training streams: where the producing worker resumes after this batch
    # B×L long packed continuations (`cheers_pl.model.attention_mask`): 0 = shared prefix; None when no row packs
    segment_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Padded:
    """Sequences left-padded to the longest one: every field B×L (long, long, bool, long, bool)."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # IGNORE_INDEX on padding and non-targets
    pad_mask: torch.Tensor  # True for real tokens
    block_ids: torch.Tensor
    prompt_mask: torch.Tensor
    segment_ids: torch.Tensor | None = None  # None when no sequence is packed

    def to(self, device: torch.device | str | None) -> "Padded":
        """The same fields on `device`."""
        return Padded(*(None if (v := getattr(self, f.name)) is None else v.to(device) for f in fields(self)))


def left_pad(seqs: list[Sequence], pad_id: int) -> Padded:
    """Left-pads sequences to the longest one (batched decoding then appends in the same column for every row)."""
    if not seqs:
        raise ValueError("left_pad needs at least one sequence")
    length = max(len(s) for s in seqs)
    size = len(seqs)
    out = Padded(
        input_ids=torch.full((size, length), pad_id, dtype=torch.long),
        labels=torch.full((size, length), IGNORE_INDEX, dtype=torch.long),
        pad_mask=torch.zeros(size, length, dtype=torch.bool),
        block_ids=torch.zeros(size, length, dtype=torch.long),
        prompt_mask=torch.zeros(size, length, dtype=torch.bool),
    )
    if any(s.segment_ids for s in seqs):
        out.segment_ids = torch.zeros(size, length, dtype=torch.long)
    for row, seq in enumerate(seqs):
        start = length - len(seq)
        out.input_ids[row, start:] = torch.tensor(seq.input_ids, dtype=torch.long)
        out.labels[row, start:] = torch.tensor(seq.labels, dtype=torch.long)
        out.pad_mask[row, start:] = True
        out.block_ids[row, start:] = torch.tensor(seq.block_ids, dtype=torch.long)
        out.prompt_mask[row, start:] = torch.tensor(seq.prompt_mask, dtype=torch.bool)
        if seq.segment_ids:
            out.segment_ids[row, start:] = torch.tensor(seq.segment_ids, dtype=torch.long)
    return out


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Stacks images and left-pads the sequences to the longest one."""
    padded = left_pad([e.sequence for e in examples], pad_id)
    events: Counter[str] = Counter()
    for e in examples:
        events.update(e.events)
    return Batch(
        images=torch.stack([e.image for e in examples]),
        task=torch.tensor([e.task for e in examples], dtype=torch.long),
        input_ids=padded.input_ids,
        labels=padded.labels,
        pad_mask=padded.pad_mask,
        block_ids=padded.block_ids,
        prompt_mask=padded.prompt_mask,
        keys=[e.key for e in examples],
        meta=[e.meta for e in examples],
        events=dict(events),
        cursor=examples[-1].cursor,  # a DataLoader worker makes whole batches: the last example is the latest
        segment_ids=padded.segment_ids,
    )
