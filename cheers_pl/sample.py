"""`answer` and `sample` commands: image + question → text, and prompt → PNG files, from a trained checkpoint (R12)."""

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cheers_pl.data.processing import decode_image, to_uint8, understanding_transform
from cheers_pl.restore import load_stage


@dataclass
class AnswerArgs:
    """`python -m cheers_pl answer ckpt=... image=... question="..."`."""

    ckpt: str = "???"
    image: str = "???"
    question: str = "???"
    max_new_tokens: int = 16
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
    out_dir: str = "samples"
    overrides: list[str] = field(default_factory=list)


def answer(args: AnswerArgs) -> dict:
    """Answers one question about one image file."""
    stage = load_stage(args.ckpt, args.overrides)
    path = Path(args.image)
    if not path.is_file():
        raise ValueError(f"image={args.image!r}: no such file")
    img, _ = decode_image(path.read_bytes())
    x = understanding_transform(img, stage.cfg.data.image_size)[None].to(stage.device)
    return {"question": args.question, "answer": stage.answer(x, [args.question], args.max_new_tokens)[0]}


def sample(args: SampleArgs) -> dict:
    """Generates `num_images` images of one prompt and writes them as PNG files."""
    if args.num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {args.num_images}")
    stage = load_stage(args.ckpt, args.overrides)
    out = stage.generate_images(
        [args.prompt] * args.num_images,
        seed=args.seed,
        num_steps=args.num_steps,
        guidance_scale=args.guidance_scale,
        alpha=args.alpha,
        sampler=args.sampler,
    )
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, arr in enumerate(to_uint8(out.images).permute(0, 2, 3, 1).cpu().numpy()):
        paths.append(str(out_dir / f"sample_{args.seed}_{i:02d}.png"))
        Image.fromarray(arr).save(paths[-1])
    return {"prompt": args.prompt, "files": paths}
