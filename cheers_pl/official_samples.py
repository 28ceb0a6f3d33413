"""`geneval-samples` and `dpg-samples`: generated images in the layouts the official benchmark scorers read (R12).

- GenEval (`python -m cheers_pl geneval-samples ckpt=...`): `<out_dir>/<index:05d>/metadata.jsonl` (the prompt's
  metadata object, as GenEval's `evaluate_images.py` reads it with `json.load`) and
  `<out_dir>/<index:05d>/samples/<k:05d>.png`, `num_images` = 4 per prompt, as the released
  `Evaluation_GenEval/generation/umm_generate.py` writes them. Defaults are that script's settings: 80 steps,
  guidance 9.5 and no α warp (α = 1: the script passes no α). Pixels: clamp to [0, 1], ×255, round (torchvision's
  `save_image`).
- DPG-Bench (`dpg-samples`): `<out_dir>/<id>.jpg`, the prompt's 4 images as one 2×2 grid (top-left, top-right,
  bottom-left, bottom-right), as the released `Evaluation_DPGBench/benchmarks/dpg/dpg_dataset.py` writes them.
  Defaults are its script's: 250 steps, guidance 9.5, α 0.5. Pixels: ×255, clipped, truncated (its numpy path).

The sampler grid and the unconditional prompt come from the pipeline (`pipeline.json` of a converted release: the
released ones). Images of prompt i are one batch drawn from seed `seed + i`; prompts already complete in `out_dir`
are skipped (`skip_existing`), so an interrupted run continues. `protocol.json` beside the folders records the
checkpoint and prompt-file hashes, seeds and sampling settings (the scorers ignore it: not a digit-named folder).
"""

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from cheers_pl.data.processing import to_unit
from cheers_pl.eval.report import sha256_file
from cheers_pl.pipeline import CheersPipeline
from cheers_pl.restore import load_pipeline

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "prompts" / "official"
GENEVAL_METADATA = PROMPTS_DIR / "geneval_evaluation_metadata.jsonl"
DPG_PROMPTS = PROMPTS_DIR / "dpg_prompts.jsonl"
PROTOCOL_FILE = "protocol.json"


@dataclass
class OfficialSamplesArgs:
    """Arguments both writers take; `None` sampling values take the pipeline's."""

    ckpt: str = "???"  # a stage checkpoint or an exported / converted directory
    out_dir: str = "???"
    seed: int = 0
    num_images: int = 4
    num_steps: int | None = None
    guidance_scale: float | None = None
    alpha: float | None = None
    sampler: str | None = None
    time_grid: str | None = None
    limit: int | None = None  # only the first `limit` prompts (smoke runs)
    skip_existing: bool = True
    device: str = "cpu"
    dtype: str | None = None  # "bfloat16" on a GPU
    overrides: list[str] = field(default_factory=list)


@dataclass
class GenEvalArgs(OfficialSamplesArgs):
    """`python -m cheers_pl geneval-samples ckpt=... [metadata=<jsonl>] [out_dir=geneval_samples]`."""

    metadata: str = str(GENEVAL_METADATA)
    out_dir: str = "geneval_samples"
    num_steps: int | None = 80
    guidance_scale: float | None = 9.5
    alpha: float | None = 1.0


@dataclass
class DPGArgs(OfficialSamplesArgs):
    """`python -m cheers_pl dpg-samples ckpt=... [prompts=<jsonl or dir of <id>.txt>] [out_dir=dpg_samples]`."""

    prompts: str = str(DPG_PROMPTS)
    out_dir: str = "dpg_samples"
    num_steps: int | None = 250
    guidance_scale: float | None = 9.5
    alpha: float | None = 0.5


def load_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict]:
    """The objects of a JSON-lines file, each checked to have the `required` keys.

    Raises:
        ValueError: naming the file and line of a missing file, bad JSON or a missing key.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err})") from err
        missing = [k for k in required if k not in item]
        if missing:
            raise ValueError(f"{path}:{number}: missing keys {missing}")
        items.append(item)
    return items


def load_dpg_prompts(path: str | Path) -> list[dict]:
    """DPG-Bench prompts as `{"id", "prompt"}`: from a JSON-lines file, or DPG-Bench's folder of `<id>.txt`."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
        if not files:
            raise ValueError(f"{path}: no <id>.txt prompt files")
        return [{"id": p.stem, "prompt": p.read_text(encoding="utf-8")} for p in files]
    return load_jsonl(path, ("id", "prompt"))


def _settings(pipe: CheersPipeline, args: OfficialSamplesArgs) -> dict:
    given = {k: getattr(args, k) for k in ("num_steps", "guidance_scale", "alpha", "sampler", "time_grid")}
    return asdict(replace(pipe.sampling, **{k: v for k, v in given.items() if v is not None}))


def _generate(pipe: CheersPipeline, prompt: str, args: OfficialSamplesArgs, index: int, sampling: dict) -> torch.Tensor:
    """The prompt's `num_images` images in [0, 1], B×3×H×W float32 on the CPU."""
    kwargs = {k: sampling[k] for k in ("num_steps", "guidance_scale", "alpha", "sampler", "time_grid")}
    out = pipe.generate([prompt] * args.num_images, seed=args.seed + index, **kwargs)
    return to_unit(out.images).cpu()


def _checkpoint_hash(ckpt: Path) -> str:
    if ckpt.is_file():
        return sha256_file(ckpt)
    files = sorted(p for p in ckpt.iterdir() if p.suffix in (".json", ".safetensors"))
    return "+".join(f"{p.name}:{sha256_file(p)[:16]}" for p in files)


def _protocol(args: OfficialSamplesArgs, benchmark: str, prompts: Path, count: int, sampling: dict) -> dict:
    return {
        "benchmark": benchmark,
        "checkpoint": str(Path(args.ckpt).resolve()),
        "checkpoint_sha256": _checkpoint_hash(Path(args.ckpt)),
        "prompts_file": str(prompts.resolve()),
        "prompts_sha256": sha256_file(prompts) if prompts.is_file() else None,
        "num_prompts": count,
        "images_per_prompt": args.num_images,
        "seeds": f"prompt i: seed {args.seed} + i (one batch of {args.num_images})",
        "sampling": sampling,
        "device": args.device,
        "dtype": args.dtype,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _check(args: OfficialSamplesArgs) -> None:
    if args.num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {args.num_images}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"limit must be >= 1, got {args.limit}")


def geneval_samples(args: GenEvalArgs) -> dict:
    """Writes the GenEval folders for every prompt of `args.metadata`; returns a summary."""
    _check(args)
    items = load_jsonl(args.metadata, ("prompt",))[: args.limit]
    pipe = load_pipeline(args.ckpt, args.overrides, args.device, args.dtype)
    sampling, out, written = _settings(pipe, args), Path(args.out_dir), 0
    out.mkdir(parents=True, exist_ok=True)
    protocol = _protocol(args, "geneval", Path(args.metadata), len(items), sampling)
    (out / PROTOCOL_FILE).write_text(json.dumps(protocol, indent=2))
    for index, metadata in enumerate(items):
        folder = out / f"{index:05d}"
        paths = [folder / "samples" / f"{k:05d}.png" for k in range(args.num_images)]
        if args.skip_existing and all(p.is_file() for p in paths) and (folder / "metadata.jsonl").is_file():
            continue
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(metadata, ensure_ascii=False), encoding="utf-8")
        images = (_generate(pipe, metadata["prompt"], args, index, sampling) * 255 + 0.5).clamp(0, 255).to(torch.uint8)
        for path, image in zip(paths, images.permute(0, 2, 3, 1).numpy(), strict=True):
            Image.fromarray(image).save(path)
        written += 1
    return {"out_dir": str(out), "prompts": len(items), "written": written, "protocol": str(out / PROTOCOL_FILE)}


def dpg_samples(args: DPGArgs) -> dict:
    """Writes one 2×2 grid `<id>.jpg` per DPG-Bench prompt; returns a summary."""
    _check(args)
    if args.num_images != 4:
        raise ValueError(f"num_images={args.num_images}: DPG-Bench's layout is a 2×2 grid of 4 images")
    items = load_dpg_prompts(args.prompts)[: args.limit]
    pipe = load_pipeline(args.ckpt, args.overrides, args.device, args.dtype)
    sampling, out, written = _settings(pipe, args), Path(args.out_dir), 0
    out.mkdir(parents=True, exist_ok=True)
    protocol = _protocol(args, "dpg", Path(args.prompts), len(items), sampling)
    (out / PROTOCOL_FILE).write_text(json.dumps(protocol, indent=2))
    for index, item in enumerate(items):
        path = out / f"{item['id']}.jpg"
        if args.skip_existing and path.is_file():
            continue
        images = (_generate(pipe, item["prompt"], args, index, sampling) * 255).clamp(0, 255).to(torch.uint8)
        top = torch.cat([images[0], images[1]], dim=2)
        bottom = torch.cat([images[2], images[3]], dim=2)
        Image.fromarray(torch.cat([top, bottom], dim=1).permute(1, 2, 0).numpy()).save(path)
        written += 1
    return {"out_dir": str(out), "prompts": len(items), "written": written, "protocol": str(out / PROTOCOL_FILE)}
