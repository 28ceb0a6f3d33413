"""The `evaluate` command: one checkpoint → `report.json` + `report.md` + sample grids (DESIGN.md §5, R12).

`python -m cheers_pl evaluate ckpt=runs/tiny_generation/checkpoints/last.ckpt [per_category=4 ...]` rebuilds the
stage from the config saved in the checkpoint (R13; extra `key=value` items override it) and runs:
- generation: GenEval-style, detector-free scores on the held-out prompt set (`per_category` prompts per category,
  or `prompts_file`), `images_per_prompt` images per prompt per seed, per category, overall, held-out vs
  in-distribution, with one sample-grid PNG per category;
- understanding: exact-match VQA on every question of the `split` samples (up to `max_vqa`), per category,
  overall, held-out vs in-distribution scenes;
- reconstruction: PSNR / SSIM / detail error of the VAE round trip and of D at t = 1, on the `split` scenes and on
  scikit-image photos;
- distribution: FID / CLIP score where the checkpoint's config has `callbacks.fid` / `callbacks.clip_score`.
Sections the stage cannot run (the tokenizer stage neither generates nor answers) are reported as skipped, with
the reason. Sampling settings left unset take the stage's `stage.sampling` values, and the report stores the
values actually used. The output goes to `out_dir`, by default `<run dir>/eval` where the run directory is the
checkpoint's `checkpoints/` parent (else the checkpoint's folder).
"""

import datetime
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from cheers_pl.checkpoint import read_checkpoint
from cheers_pl.config import config_of_checkpoint
from cheers_pl.data.processing import to_uint8
from cheers_pl.data.synthetic_scene import Scene
from cheers_pl.eval.distribution import evaluate_distribution, load_caption_pairs, load_split_samples, skipped
from cheers_pl.eval.generation import evaluate_generation, tile
from cheers_pl.eval.geneval_prompts import load_prompts, make_prompts, save_prompts
from cheers_pl.eval.reconstruction import PHOTO_NAMES, photo_images, reconstruction_scores, recovery_scores
from cheers_pl.eval.report import sha256_file, write_report
from cheers_pl.eval.retrieval import retrieval_scores
from cheers_pl.eval.understanding import load_vqa_items, run_vqa
from cheers_pl.restore import load_stage

PROMPTS_FILE = "geneval_prompts.jsonl"  # the prompt set used, written next to the report
NUM_GRID_IMAGES = 8  # reconstruction grid rows


@dataclass
class EvaluateArgs:
    """Arguments of `python -m cheers_pl evaluate` (any other `key=value` overrides the checkpoint's config)."""

    ckpt: str = "???"  # the checkpoint to evaluate
    out_dir: str | None = None  # default: <run dir>/eval
    per_category: int = 4  # GenEval prompts per category (ignored with prompts_file)
    prompts_file: str | None = None  # a GenEval prompts JSONL (e.g. data/prompts/geneval_tiny.jsonl)
    images_per_prompt: int = 2
    seeds: list[int] = field(default_factory=lambda: [0])
    num_steps: int | None = None  # None: the stage's stage.sampling value
    guidance_scale: float | None = None
    alpha: float | None = None
    sampler: str | None = None
    max_vqa: int = 256  # questions
    max_new_tokens: int = 8
    max_recon: int = 64  # synthetic scenes for the reconstruction metrics
    max_retrieval: int = 256  # image–caption pairs for retrieval (groups of 32 candidates)
    num_photos: int = len(PHOTO_NAMES)  # scikit-image photos (two 64×64 views each) for the reconstruction metrics
    split: str = "test"  # held-out split for VQA, reconstruction and FID/CLIP real images
    batch_size: int = 16
    sections: list[str] = field(
        default_factory=lambda: ["generation", "understanding", "reconstruction", "retrieval", "distribution"]
    )
    device: str | None = None  # default: cuda when available
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in (
            "per_category",
            "images_per_prompt",
            "max_vqa",
            "max_new_tokens",
            "max_recon",
            "max_retrieval",
            "num_photos",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {self.split!r}")
        unknown = set(self.sections) - {"generation", "understanding", "reconstruction", "retrieval", "distribution"}
        if unknown:
            raise ValueError(f"sections: unknown {sorted(unknown)}")


def default_out_dir(ckpt: str | Path) -> Path:
    """`<run dir>/eval`: the run directory holds `checkpoints/<file>`; otherwise next to the checkpoint."""
    parent = Path(ckpt).resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "eval"


def _sampling(stage: Any, args: EvaluateArgs) -> dict[str, Any]:
    defaults = stage.stage_cfg.sampling
    return {
        key: getattr(args, key) if getattr(args, key) is not None else getattr(defaults, key)
        for key in ("num_steps", "guidance_scale", "alpha", "sampler")
    }


def _prompts(args: EvaluateArgs, world: Any, out: Path) -> tuple[list, str, str]:
    if args.prompts_file is not None:
        prompts, source = load_prompts(args.prompts_file), args.prompts_file
    else:
        prompts, source = (
            make_prompts(world, args.per_category, seed=0),
            f"make_prompts(per_category={args.per_category})",
        )
    save_prompts(prompts, out / PROMPTS_FILE)
    return prompts, sha256_file(out / PROMPTS_FILE), source


def _generation(stage: Any, cfg: Any, args: EvaluateArgs, out: Path, sampling: dict) -> dict[str, Any]:
    prompts, prompt_hash, source = _prompts(args, cfg.data.synthetic, out)
    section = evaluate_generation(
        stage, prompts, cfg.data.synthetic, out, args.images_per_prompt, args.seeds, sampling, args.batch_size
    )
    section["protocol"].update(prompts_file=PROMPTS_FILE, prompts_file_sha256=prompt_hash, prompts_source=source)
    return section


def _understanding(stage: Any, cfg: Any, args: EvaluateArgs) -> dict[str, Any]:
    items, bad, num_samples = load_vqa_items(cfg.data.shards(args.split), cfg.data.image_size, args.max_vqa)
    if not items:
        return {"skipped": f"no question-answer metadata in split {args.split!r} ({cfg.data.shards(args.split)})"}
    device = next(stage.parameters()).device

    def answer(images: torch.Tensor, questions: list[str]) -> list[str]:
        return stage.answer(images.to(device), questions, max_new_tokens=args.max_new_tokens)

    section = run_vqa(answer, items, batch_size=args.batch_size)
    section["protocol"] = {
        "split": args.split,
        "shards": cfg.data.shards(args.split),
        "num_questions": len(items),
        "num_samples": num_samples,
        "max_vqa": args.max_vqa,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "match": "normalised exact match (lower-case, no punctuation, collapsed whitespace)",
        "skipped_samples": bad,
    }
    return section


def _reconstruction(stage: Any, cfg: Any, args: EvaluateArgs, out: Path) -> dict[str, Any]:
    vision = stage.model.vision
    scenes, _, metas = load_split_samples(cfg.data.shards(args.split), cfg.data.image_size, args.max_recon)
    photos, photo_names = photo_images(cfg.data.image_size, PHOTO_NAMES[: args.num_photos])
    section: dict[str, Any] = {"grids": {}}
    for name, images in (("synthetic", scenes if len(scenes) else None), ("photos", photos)):
        if images is None:
            continue
        section[name], first = reconstruction_scores(vision, images, batch_size=args.batch_size)
        rows = [
            [to_uint8(x[:NUM_GRID_IMAGES])[k].permute(1, 2, 0).numpy() for x in (images, *first.values())]
            for k in range(min(NUM_GRID_IMAGES, len(next(iter(first.values())))))
        ]
        Image.fromarray(tile(rows)).save(out / f"reconstruction_{name}.png")
        section["grids"][name] = f"reconstruction_{name}.png"
    if len(scenes) and all("scene" in m for m in metas):
        truth = [Scene.from_json(m["scene"]) for m in metas]
        section["synthetic_parser"] = recovery_scores(vision, scenes, truth, cfg.data.synthetic, args.batch_size)
    section["protocol"] = {
        "split": args.split,
        "num_synthetic": len(scenes),
        "photos": photo_names,
        "image_size": cfg.data.image_size,
        "reconstructions": "vae = VAE round trip; decoder_t1 = pixel decoder D(z1) at t = 1",
        "metrics": "per-image mean on [0, 1]: PSNR (data range 1), SSIM (torchmetrics Gaussian 11), detail error "
        "(relative spectral error above 0.25 cycles/pixel)",
        "grid_columns": "original | " + " | ".join(first),
        "parser": "synthetic_parser: share of true objects whose attribute the scene parser recovers from the "
        "reconstruction (count: share of scenes with the right number of objects; digit_objects: over objects "
        "that carry a digit)",
    }
    return section


def _retrieval(stage: Any, cfg: Any, args: EvaluateArgs) -> dict[str, Any]:
    if getattr(stage.model, "contrastive", None) is None:
        return {"skipped": "the model has no contrastive towers (model.contrastive is null)"}
    images, captions = load_caption_pairs(cfg.data.shards(args.split), cfg.data.image_size, args.max_retrieval)
    if len(captions) < 32:
        return {"skipped": f"only {len(captions)} image-caption pairs in split {args.split!r} (need 32)"}
    device = next(stage.parameters()).device

    def embed(x: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return stage.contrastive_embed(x.to(device), texts)

    section: dict[str, Any] = {"scores": retrieval_scores(embed, images, captions, 32, args.batch_size)}
    section["protocol"] = {"split": args.split, "pairs": len(captions), "captions": "canonical (first) caption",
                           "embedding": "contrastive towers: encoder(D(x1)) image head vs caption tower"}  # fmt: skip
    return section


def run(args: EvaluateArgs) -> dict[str, Any]:
    """Evaluates `args.ckpt` and writes the report; returns the report paths and the headline numbers."""
    started = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ckpt = read_checkpoint(args.ckpt)
    cfg = config_of_checkpoint(ckpt, ["stage.init_from=null", *args.overrides], args.ckpt)
    global_step = int(ckpt.get("global_step", -1))
    stage = load_stage(args.ckpt, args.overrides, device=device, ckpt=ckpt)
    del ckpt  # the weights now live in the stage
    out = Path(args.out_dir) if args.out_dir is not None else default_out_dir(args.ckpt)
    out.mkdir(parents=True, exist_ok=True)
    can_generate = hasattr(stage, "generate_images")
    sampling = _sampling(stage, args) if can_generate else {}
    report: dict[str, Any] = {
        "protocol": {
            "checkpoint": str(Path(args.ckpt).resolve()),
            "checkpoint_sha256": sha256_file(args.ckpt),
            "experiment": cfg.name,
            "stage": cfg.stage.name,
            "global_step": global_step,
            "split": args.split,
            "seeds": list(args.seeds),
            **sampling,
            "overrides": list(args.overrides),
            "device": device,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
    }
    no_gen = f"stage {cfg.stage.name!r} has no generate_images"
    if "generation" not in args.sections:
        report["generation"] = {"skipped": "not requested (sections)"}
    else:
        report["generation"] = _generation(stage, cfg, args, out, sampling) if can_generate else {"skipped": no_gen}
    if "understanding" not in args.sections:
        report["understanding"] = {"skipped": "not requested (sections)"}
    elif hasattr(stage, "answer"):
        report["understanding"] = _understanding(stage, cfg, args)
    else:
        report["understanding"] = {"skipped": f"stage {cfg.stage.name!r} has no answer"}
    rec = "reconstruction" in args.sections
    report["reconstruction"] = _reconstruction(stage, cfg, args, out) if rec else {"skipped": "not requested"}
    if "retrieval" not in args.sections:
        report["retrieval"] = {"skipped": "not requested (sections)"}
    else:
        report["retrieval"] = _retrieval(stage, cfg, args)
    if "distribution" not in args.sections:
        report["distribution"] = skipped("not requested (sections)")
    else:
        shards = cfg.data.shards(args.split)
        report["distribution"] = evaluate_distribution(
            stage, cfg.callbacks, shards, cfg.data.image_size, sampling, args.split, args.batch_size
        )
    report["protocol"]["wall_s"] = round(time.perf_counter() - started, 1)
    paths = write_report(report, out)
    headline = {
        f"{section}/{key}": value
        for section in ("generation", "understanding")
        for key, value in report[section].get("scores", {}).items()
        if key in ("overall", "held_out")
    }
    for image_set in ("synthetic", "photos"):
        for recon, metrics in report["reconstruction"].get(image_set, {}).items():
            headline[f"reconstruction/{image_set}/{recon}/psnr"] = metrics["psnr"]
    for recon, metrics in report["reconstruction"].get("synthetic_parser", {}).items():
        headline[f"reconstruction/parser/{recon}/shape_color"] = min(metrics["shape"], metrics["color"])
    if "scores" in report["retrieval"]:
        headline["retrieval/top1_of_32"] = report["retrieval"]["scores"]["top1"]
    return {**{k: str(v) for k, v in paths.items()}, "out_dir": str(out), **headline}
