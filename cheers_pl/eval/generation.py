"""Generation section of the evaluate command: GenEval-style scores of a stage plus per-category sample grids.

The stage's public `generate_images` renders `images_per_prompt` images per held-out prompt for every seed
(`cheers_pl.eval.geneval.run_geneval`: chunk i of seed s is generated with seed s·100003 + i, so the images depend
only on the protocol, never on the machine); the detector-free scorer parses and scores them. Every image is kept
and laid out per category as a PNG grid: one row per prompt, one column per (seed, image) pair.

Legend: N images, H/W image side.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cheers_pl.data.processing import to_uint8
from cheers_pl.data.synthetic_scene import SyntheticConfig
from cheers_pl.eval.geneval import CATEGORIES, GenEvalPrompt, run_geneval

GRID_PAD = 2  # white pixels between tiles


def tile(rows: Sequence[Sequence[np.ndarray]], pad: int = GRID_PAD) -> np.ndarray:
    """Lays out rows of equal-size uint8 H×W×3 images as one grid on a white background."""
    if not rows or not rows[0]:
        raise ValueError("tile needs at least one row with one image")
    h, w, _ = rows[0][0].shape
    num_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, num_cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[top : top + h, left : left + w] = img
    return grid


def write_category_grids(
    images: Sequence[np.ndarray],
    prompts: Sequence[GenEvalPrompt],
    images_per_prompt: int,
    num_seeds: int,
    out_dir: str | Path,
) -> dict[str, dict[str, Any]]:
    """Writes `samples_<category>.png` for each category from `run_geneval`'s images (its generation order).

    Returns:
        {category: {"file": file name relative to `out_dir`, "prompts": the row prompts}}.
    """
    per_prompt = len(prompts) * images_per_prompt
    if len(images) != per_prompt * num_seeds:
        raise ValueError(f"expected {per_prompt * num_seeds} images (all kept), got {len(images)}")
    # run_geneval's order: seed-major, then prompt, then image: index = s·P·k + p·k + j
    columns = {
        p: [
            images[s * per_prompt + p * images_per_prompt + j]
            for s in range(num_seeds)
            for j in range(images_per_prompt)
        ]
        for p in range(len(prompts))
    }
    out, grids = Path(out_dir), {}
    out.mkdir(parents=True, exist_ok=True)
    for category in CATEGORIES:
        rows = [p for p, prompt in enumerate(prompts) if prompt.category == category]
        if not rows:
            continue
        name = f"samples_{category}.png"
        Image.fromarray(tile([columns[p] for p in rows])).save(out / name)
        grids[category] = {"file": name, "prompts": [prompts[p].text for p in rows]}
    return grids


def evaluate_generation(
    stage: Any,
    prompts: Sequence[GenEvalPrompt],
    world: SyntheticConfig,
    out_dir: str | Path,
    images_per_prompt: int,
    seeds: Sequence[int],
    sampling: dict[str, Any],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Scores `stage.generate_images` on the prompts and writes the grids.

    Args:
        sampling: resolved `num_steps`, `guidance_scale`, `alpha`, `sampler` passed to `generate_images`.

    Returns:
        {"scores", "counts", "protocol" (run_geneval's + the sampling settings), "grids"}.
    """

    def generate_fn(texts: list[str], seed: int) -> torch.Tensor:
        return to_uint8(stage.generate_images(texts, seed=seed, **sampling).images.cpu())

    num_images = len(prompts) * images_per_prompt * len(seeds)
    result = run_geneval(
        generate_fn,
        prompts,
        world,
        images_per_prompt=images_per_prompt,
        seeds=seeds,
        batch_size=batch_size,
        keep_images=num_images,
    )
    grids = write_category_grids(result["images"], prompts, images_per_prompt, len(seeds), out_dir)
    held = sum(bool(p.held_out) for p in prompts)
    protocol = {**result["protocol"], **sampling, "num_held_out_prompts": held, "scorer": "cheers_pl.eval.geneval"}
    return {"scores": result["scores"], "counts": result["counts"], "protocol": protocol, "grids": grids}
