"""`answer`, `sample` and `edit` commands: image + question → text, prompt → PNG files, image + instruction → PNG (R12).

Each takes `ckpt=` a stage checkpoint (`last.ckpt`) or an exported directory (`save_pretrained`, `convert-official`).
`edit` is the released code's zero-shot editing (`CheersPipeline.edit`): the source stays in context as a clean
`<image>` block and the latent starts at `t0·z1(source) + (1 − t0)·noise`.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from cheers_pl.data.processing import decode_image, to_uint8
from cheers_pl.pipeline import CheersPipeline
from cheers_pl.restore import load_pipeline


@dataclass
class AnswerArgs:
    """`python -m cheers_pl answer ckpt=... image=... question="..."`."""

    ckpt: str = "???"
    image: str = "???"
    question: str = "???"
    max_new_tokens: int = 16
    device: str = "cpu"
    dtype: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class SampleArgs:
    """`python -m cheers_pl sample ckpt=... prompt="..." num_images=4`."""

    ckpt: str = "???"
    prompt: str = "???"
    num_images: int = 4
    seed: int = 0
    num_steps: int | None = None
    guidance_scale: float | None = None
    alpha: float | None = None
    sampler: str | None = None
    time_grid: str | None = None
    out_dir: str = "samples"
    device: str = "cpu"
    dtype: str | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass
class EditArgs:
    """`python -m cheers_pl edit ckpt=... image=... instruction="..." [t0=0.1] [num_images=1]`."""

    ckpt: str = "???"
    image: str = "???"
    instruction: str = "???"
    num_images: int = 1
    seed: int = 0
    t0: float = 0.1
    num_steps: int | None = None
    guidance_scale: float | None = None
    alpha: float | None = None
    sampler: str | None = None
    time_grid: str | None = None
    out_dir: str = "samples"
    device: str = "cpu"
    dtype: str | None = None
    overrides: list[str] = field(default_factory=list)


def _image(pipe: CheersPipeline, path_str: str, key: str = "image") -> torch.Tensor:
    path = Path(path_str)
    if not path.is_file():
        raise ValueError(f"{key}={path_str!r}: no such file")
    try:
        img, _ = decode_image(path.read_bytes())
    except ValueError as err:  # PIL's message names a BytesIO, not the file
        raise ValueError(f"{key}={path_str!r}: not an image file PIL can decode (PNG, JPEG, WebP, ...)") from err
    return pipe.preprocess(img)[None].to(pipe.device)


def _save(images: torch.Tensor, out_dir: str, stem: str) -> list[str]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
        paths.append(str(out / f"{stem}_{i:02d}.png"))
        Image.fromarray(arr).save(paths[-1])
    return paths


def answer(args: AnswerArgs) -> dict:
    """Answers one question about one image file."""
    pipe = load_pipeline(args.ckpt, args.overrides, args.device, args.dtype)
    x = _image(pipe, args.image)
    return {"question": args.question, "answer": pipe.answer(x, [args.question], args.max_new_tokens)[0]}


def sample(args: SampleArgs) -> dict:
    """Generates `num_images` images of one prompt and writes them as PNG files."""
    if args.num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {args.num_images}")
    pipe = load_pipeline(args.ckpt, args.overrides, args.device, args.dtype)
    out = pipe.generate(
        [args.prompt] * args.num_images,
        seed=args.seed,
        num_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        alpha=args.alpha,
        sampler=args.sampler,
        time_grid=args.time_grid,
    )
    return {"prompt": args.prompt, "files": _save(out.images, args.out_dir, f"sample_{args.seed}")}


def edit(args: EditArgs) -> dict:
    """Edits one image file by an instruction (`num_images` variants from one seeded batch); writes PNG files."""
    if args.num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {args.num_images}")
    pipe = load_pipeline(args.ckpt, args.overrides, args.device, args.dtype)
    source = _image(pipe, args.image).expand(args.num_images, -1, -1, -1)
    out = pipe.edit(
        source,
        [args.instruction] * args.num_images,
        seed=args.seed,
        t0=args.t0,
        num_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        alpha=args.alpha,
        sampler=args.sampler,
        time_grid=args.time_grid,
    )
    files = _save(out.images, args.out_dir, f"edit_{args.seed}")
    return {"instruction": args.instruction, "t0": args.t0, "files": files}
