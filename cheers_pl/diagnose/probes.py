"""Diagnosis 1a, what the tokenizer carries: linear and MLP probes on frozen features, and D's fidelity at t = 1.

Scenes come straight from the synthetic world (`make_sample`): probes are fitted on train-split scenes and scored on
test-split scenes that hold no held-out composition. Three feature sets of the same images:
- `pixels`: the image itself, as 8×8-pixel cells (the semantic grid's cells);
- `semantic`: the frozen semantic encoder's tokens encoder(D(x1)) on the latent grid (what the flow head's detail
  path and the compressor read);
- `llm`: the compressed LLM tokens (the projector's output, what the LLM reads).
Object attributes (shape, colour, texture, size, digit, region) are probed on the 3×3 cells around the object's
centre cell of each grid (zero outside the image), the scene's object count on the whole flattened grid. Pixel
windows carry no absolute position, so their region accuracy is chance by construction; token windows can carry it
through the encoder's position embeddings. Every accuracy is reported with the test set's majority-class rate.
D at t = 1: PSNR of D(x1) and the share of objects whose attributes the scene parser recovers from D(x1).
Noise seen by the flow head: the head reads z_t only through D(z_t) (the detail residual S(D(z_t)) and, via the LLM,
the semantic tokens), yet its target x1 − x0 needs the noise x0. A least-squares probe per latent position (fitted on
80 % of the positions, scored by R² on the rest) measures how much of x0 is linearly recoverable from S(D(z_t)),
against z_t itself as the reference; where S(D(z_t)) carries none, the flow loss cannot fall below ≈ Var(x0).
Objects D shows in noise: the scene parser's mean object count in D(z_t) of the test scenes at t = 0 (pure noise, no
object there) and small t, against their true count. Where D renders noise as object-like fragments, sampling starts
from phantom objects that the head sees as real ones.

Shape legend: B images, O objects, F features, C channels, g grid side.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from cheers_pl.data.processing import to_uint8, to_unit
from cheers_pl.data.synthetic import make_sample
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.eval.reconstruction import parser_recovery, psnr
from cheers_pl.eval.scene_parser import parse_scene

OBJECT_TARGETS = ("shape", "color", "texture", "size", "digit", "region")
FEATURES = ("pixels", "semantic", "llm")
WINDOW = 3


def scene_samples(
    cfg: SyntheticConfig, split: str, num: int, in_distribution: bool
) -> tuple[torch.Tensor, list[Scene], list[dict]]:
    """The first `num` scenes of a split (optionally only those without a held-out composition): images B×3×H×W in
    [-1, 1], their scenes and each sample's json record (captions, questions)."""
    images, out, records, index = [], [], [], 0
    while len(out) < num:
        sample = make_sample(index, split, cfg)
        index += 1
        if in_distribution and sample["json"]["held_out"]:
            continue
        images.append(torch.from_numpy(sample["image"]).permute(2, 0, 1).float() / 127.5 - 1)
        out.append(Scene.from_json(sample["json"]["scene"]))
        records.append(sample["json"])
    return torch.stack(images), out, records


def scenes(cfg: SyntheticConfig, split: str, num: int, in_distribution: bool) -> tuple[torch.Tensor, list[Scene]]:
    """`scene_samples` without the json records."""
    images, scene_list, _ = scene_samples(cfg, split, num, in_distribution)
    return images, scene_list


def _ridge_r2(x_NF: torch.Tensor, y_NK: torch.Tensor, split: float = 0.8) -> float:
    """R² on held-out rows of a least-squares map x → y (with bias, tiny ridge for stability)."""
    x_NF = torch.cat([x_NF, torch.ones(len(x_NF), 1)], 1).double()
    y_NK = y_NK.double()
    n = int(split * len(x_NF))
    gram = x_NF[:n].T @ x_NF[:n] + 1e-6 * torch.eye(x_NF.shape[1], dtype=x_NF.dtype)
    w = torch.linalg.solve(gram, x_NF[:n].T @ y_NK[:n])
    residual = ((x_NF[n:] @ w - y_NK[n:]) ** 2).sum()
    return round(float(1 - residual / ((y_NK[n:] - y_NK[n:].mean(0)) ** 2).sum()), 3)


@torch.no_grad()
def _encode(vision: nn.Module, images_B3HW: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The latents x1 B,P,h,w of `images_B3HW`, encoded `batch_size` at a time."""
    return torch.cat([vision.encode(chunk) for chunk in images_B3HW.split(batch_size)])


@torch.no_grad()
def noise_recoverability(
    vision: nn.Module, images_B3HW: torch.Tensor, ts: Sequence[float] = (0.3, 0.7), seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per t: R² of the noise x0 from the detail residual S(D(z_t)), from z_t itself, and from both (module doc)."""
    generator = torch.Generator().manual_seed(seed)
    latents = list(_encode(vision, images_B3HW).split(64))  # B,P,h,w
    out = {}
    for t in ts:
        detail, noisy, noise = [], [], []
        for x1 in latents:
            x0 = torch.randn(x1.shape, generator=generator).to(x1)
            z_t = t * x1 + (1 - t) * x0
            detail.append(vision.features(z_t).detail.flatten(0, 1))  # (B·h·w),C on the latent grid
            noisy.append(z_t.flatten(2).transpose(1, 2).flatten(0, 1))
            noise.append(x0.flatten(2).transpose(1, 2).flatten(0, 1))
        d, z, y = torch.cat(detail), torch.cat(noisy), torch.cat(noise)
        out[f"t={t}"] = {"detail": _ridge_r2(d, y), "z_t": _ridge_r2(z, y), "both": _ridge_r2(torch.cat([d, z], 1), y)}
    return out


@torch.no_grad()
def phantom_objects(
    vision: nn.Module, images_B3HW: torch.Tensor, scene_list: Sequence[Scene], cfg: SyntheticConfig,
    ts: Sequence[float] = (0.0, 0.3), seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Per t: the mean number of objects the scene parser finds in D(z_t), and the scenes' true mean count."""
    generator = torch.Generator().manual_seed(seed)
    x1 = _encode(vision, images_B3HW)
    x0 = torch.randn(x1.shape, generator=generator).to(x1)
    out: dict[str, Any] = {"true": round(float(np.mean([len(s.objects) for s in scene_list])), 3)}
    for t in ts:
        z_t = t * x1 + (1 - t) * x0
        decoded = torch.cat([vision.decode_pixels(z_t[start : start + 64]) for start in range(0, len(z_t), 64)])
        images = to_uint8(decoded.clamp(-1, 1)).permute(0, 2, 3, 1).cpu().numpy()
        out[f"t={t}"] = round(float(np.mean([len(parse_scene(image, cfg)) for image in images])), 3)
    return out


@torch.no_grad()
def grids(vision: nn.Module, images_B3HW: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Feature grids B×C×g×g of the three feature sets, and D(x1) (key "decoded", B×3×H×W)."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (*FEATURES, "decoded")}
    h, w = vision.semantic_grid_hw
    hc, wc = vision.grid_hw
    cell = images_B3HW.shape[-1] // w
    for start in range(0, len(images_B3HW), batch_size):
        x = images_B3HW[start : start + batch_size]
        x1 = vision.encode(x)
        feats = vision.features(x1)
        tokens = vision.compress(feats.semantic)
        b = x.shape[0]
        out["pixels"].append(torch.nn.functional.pixel_unshuffle(x, cell))
        out["semantic"].append(feats.semantic.transpose(1, 2).reshape(b, -1, h, w))
        out["llm"].append(tokens.transpose(1, 2).reshape(b, -1, hc, wc))
        out["decoded"].append(feats.decoded if feats.decoded is not None else vision.vae.decode(x1))
    return {k: torch.cat(v) for k, v in out.items()}


def object_windows(grid_BCgg: torch.Tensor, scene_list: Sequence[Scene]) -> torch.Tensor:
    """O×(C·WINDOW²) features: the WINDOW×WINDOW cells around each object's centre cell (zero-padded)."""
    b, c, g, _ = grid_BCgg.shape
    pad = WINDOW // 2
    padded = torch.nn.functional.pad(grid_BCgg, (pad, pad, pad, pad))
    rows = []
    for i, scene in enumerate(scene_list):
        cell = scene.image_size / g
        for obj in scene.objects:
            r, q = min(int(obj.y // cell), g - 1), min(int(obj.x // cell), g - 1)
            rows.append(padded[i, :, r : r + WINDOW, q : q + WINDOW].reshape(-1))
    return torch.stack(rows)


def object_labels(scene_list: Sequence[Scene]) -> dict[str, list[Any]]:
    labels: dict[str, list[Any]] = {k: [] for k in OBJECT_TARGETS}
    for scene in scene_list:
        for obj in scene.objects:
            for key in OBJECT_TARGETS:
                labels[key].append(obj.region(scene.image_size) if key == "region" else getattr(obj, key))
    return labels


def fit_probe(
    x_train: torch.Tensor, y_train: Sequence, x_test: torch.Tensor, y_test: Sequence, kind: str, steps: int = 300
) -> dict[str, float]:
    """Accuracy of a linear or one-hidden-layer MLP classifier (standardised features, full-batch AdamW)."""
    classes = sorted({*map(str, y_train)})
    index = {c: i for i, c in enumerate(classes)}
    keep = [i for i, y in enumerate(y_test) if str(y) in index]
    yt = torch.tensor([index[str(y)] for y in y_train])
    ye = torch.tensor([index[str(y_test[i])] for i in keep])
    mean, std = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xt, xe = (x_train - mean) / std, (x_test[keep] - mean) / std
    torch.manual_seed(0)
    dim = xt.shape[1]
    if kind == "linear":
        net: nn.Module = nn.Linear(dim, len(classes))
        lr, wd = 1e-2, 1e-3
    else:
        net = nn.Sequential(nn.Linear(dim, 256), nn.ReLU(), nn.Linear(256, len(classes)))
        lr, wd = 1e-3, 1e-2
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=wd)
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(xt), yt).backward()
            opt.step()
    with torch.no_grad():
        acc = (net(xe).argmax(1) == ye).float().mean().item()
    majority = max(np.bincount(ye.numpy(), minlength=len(classes))) / max(len(ye), 1)
    return {"accuracy": round(acc, 3), "chance": round(float(majority), 3), "num_test": len(ye)}


def run_probes(
    vision: nn.Module, cfg: SyntheticConfig, num_train: int = 1500, num_test: int = 400, steps: int = 300,
    phantom_scenes: int = 128,
) -> dict[str, Any]:  # fmt: skip
    """The probes and D's fidelity (see the module docstring); the phantom count on the first `phantom_scenes` test
    scenes (the parser is slow on fragment-filled images)."""
    train_images, train_scenes = scenes(cfg, "train", num_train, in_distribution=True)
    test_images, test_scenes = scenes(cfg, "test", num_test, in_distribution=True)
    vision.eval()
    g_train, g_test = grids(vision, train_images), grids(vision, test_images)
    lab_train, lab_test = object_labels(train_scenes), object_labels(test_scenes)
    probes: dict[str, Any] = {}
    for feature in FEATURES:
        w_train, w_test = object_windows(g_train[feature], train_scenes), object_windows(g_test[feature], test_scenes)
        entry: dict[str, Any] = {}
        for target in OBJECT_TARGETS:
            ytr, yte = lab_train[target], lab_test[target]
            tr = [i for i, y in enumerate(ytr) if y is not None]
            te = [i for i, y in enumerate(yte) if y is not None]
            entry[target] = {
                kind: fit_probe(w_train[tr], [ytr[i] for i in tr], w_test[te], [yte[i] for i in te], kind, steps)
                for kind in ("linear", "mlp")
            }
        flat_train, flat_test = g_train[feature].flatten(1), g_test[feature].flatten(1)
        count_train = [len(s.objects) for s in train_scenes]
        count_test = [len(s.objects) for s in test_scenes]
        entry["count"] = {
            kind: fit_probe(flat_train, count_train, flat_test, count_test, kind, steps) for kind in ("linear", "mlp")
        }
        probes[feature] = entry
    decoded = g_test["decoded"]
    fidelity = {
        "psnr_decoder_t1": round(psnr(to_unit(decoded), to_unit(test_images)).mean().item(), 2),
        "parser_recovery": parser_recovery(to_uint8(decoded), test_scenes, cfg),
    }
    noise = noise_recoverability(vision, test_images)
    phantoms = phantom_objects(vision, test_images[:phantom_scenes], test_scenes[:phantom_scenes], cfg)
    protocol = {"num_train_scenes": num_train, "num_test_scenes": num_test, "probe_steps": steps, "window": WINDOW,
                "phantom_scenes": min(phantom_scenes, num_test)}  # fmt: skip
    return {
        "probes": probes,
        "decoder_t1": fidelity,
        "noise_r2": noise,
        "noise_objects": phantoms,
        "protocol": protocol,
    }
