"""`ablate`: the paper's claims (DESIGN.md §6) as pairs of experiments trained at an equal budget and evaluated
with one protocol → `ablations.json`, `ablations.md` (table with the protocol) and `ablations.png`.

Each ablation is `conf/experiment/ablate_<variant>.yaml`, a one-value change of `ablate_base.yaml`; this module only
runs `train.run` and `evaluate.run` on them and tabulates the metrics the claim is about. Every arm is trained once
per seed (`seeds`; the seed sets the initialisation, the data order and the flow noise): the table gives the mean
and the spread (max − min over seeds) of each arm, and a difference of means counts as shown only when it exceeds
the larger of the two spreads.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cheers_pl import train  # noqa: E402
from cheers_pl.config import compose  # noqa: E402
from cheers_pl.evaluate import EvaluateArgs  # noqa: E402
from cheers_pl.evaluate import run as evaluate  # noqa: E402

BASE = "ablate_base"


@dataclass(frozen=True)
class Ablation:
    """One claim: the base experiment vs a variant, compared on (section, score) metrics of the report."""

    name: str
    claim: str
    base_label: str
    variant: str
    variant_label: str
    metrics: tuple[tuple[str, str], ...]


ABLATIONS = (
    Ablation(
        "hfi", "gated high-frequency injection helps generation", "HFI gated", "ablate_hfi_off", "HFI off",
        (("generation", "overall"), ("generation", "counting"), ("generation", "color_attr")),
    ),
    Ablation(
        "compression", "4x token compression keeps quality at lower cost", "4x (16 tokens)",
        "ablate_compression_1x", "1x (64 tokens)",
        (("generation", "overall"), ("understanding", "overall"), ("train", "s_per_step")),
    ),
    Ablation(
        "joint", "joint generation training does not hurt understanding", "joint", "ablate_und_only",
        "understanding only", (("understanding", "overall"), ("understanding", "color"), ("understanding", "shape")),
    ),
    Ablation(
        "encoder_input", "pixel decoding before the encoder keeps detail", "pixels (D then encoder)",
        "ablate_latents", "latents into encoder",
        (("understanding", "digit"), ("understanding", "texture"), ("understanding", "overall")),
    ),
)  # fmt: skip


@dataclass
class AblateArgs:
    """`python -m cheers_pl ablate [names=[hfi,joint]] [max_steps=300] [reuse=true]`."""

    names: list[str] = field(default_factory=lambda: [a.name for a in ABLATIONS])
    max_steps: int | None = None  # the equal training budget (default: ablate_base's trainer.max_steps)
    out_dir: str = "runs/ablations"
    # 16 prompts × 2 images per GenEval-style category (192 images, the demo's protocol): with 4 × 1 (24 images) two
    # seeds of one arm scored 0.25 and 0.29, and the same checkpoint scored 0.14 on 192 images
    per_category: int = 16
    images_per_prompt: int = 2
    max_vqa: int = 256
    num_steps: int | None = None  # sampling steps (default: the stage's)
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # one run per arm and seed
    reuse: bool = False  # skip training when the variant's last.ckpt exists
    overrides: list[str] = field(default_factory=list)  # applied to every experiment (e.g. data.shard_dir=...)

    def __post_init__(self) -> None:
        known = {a.name for a in ABLATIONS}
        unknown = set(self.names) - known
        if unknown:
            raise ValueError(f"names: unknown ablations {sorted(unknown)}; known: {sorted(known)}")


def _train_and_evaluate(experiment: str, seed: int, args: AblateArgs) -> dict:
    overrides = [f"output_root={args.out_dir}", "trainer.enable_progress_bar=false", f"name={experiment}_s{seed}",
                 f"seed={seed}", f"data.seed={seed}", *args.overrides]  # fmt: skip
    if args.max_steps is not None:
        overrides.append(f"trainer.max_steps={args.max_steps}")
    cfg = compose(experiment, overrides)
    ckpt = cfg.run_dir / "checkpoints" / "last.ckpt"
    train_info = json.loads((cfg.run_dir / "ablate_train.json").read_text()) if args.reuse and ckpt.exists() else None
    if train_info is None:
        started = time.perf_counter()
        result = train.run(cfg)
        wall = time.perf_counter() - started
        steps = result["global_step"]
        train_info = {"steps": steps, "wall_s": round(wall, 1), "s_per_step": wall / max(1, steps)}
        (cfg.run_dir / "ablate_train.json").write_text(json.dumps(train_info))
    eval_args = EvaluateArgs(
        ckpt=str(ckpt),
        out_dir=str(cfg.run_dir / "eval"),
        per_category=args.per_category,
        images_per_prompt=args.images_per_prompt,
        num_steps=args.num_steps,
        max_vqa=args.max_vqa,
        sections=["generation", "understanding"],
    )
    evaluate(eval_args)
    report = json.loads((cfg.run_dir / "eval" / "report.json").read_text())
    return {"train": train_info, "report": report, "batch_size": cfg.data.batch_size}


def _value(result: dict, section: str, key: str) -> float | None:
    if section == "train":
        return result["train"].get(key)
    return result["report"].get(section, {}).get("scores", {}).get(key)


def summarise(values: list[float | None]) -> dict[str, float | None]:
    """Mean, spread (max − min) and the values over seeds (None where a run lacks the metric)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "spread": None, "values": values}
    return {"mean": sum(got) / len(got), "spread": max(got) - min(got), "values": values}


def shown(base: dict, variant: dict) -> bool | None:
    """Whether the difference of means exceeds the larger spread (None when a side is missing)."""
    if base["mean"] is None or variant["mean"] is None:
        return None
    return abs(variant["mean"] - base["mean"]) > max(base["spread"], variant["spread"])


def _fmt(entry: dict) -> str:
    if entry["mean"] is None:
        return "n/a"
    return f"{entry['mean']:.3f} ± {entry['spread'] / 2:.3f}"


def _markdown(rows: list[dict], protocol: dict) -> str:
    lines = ["# Ablations (DESIGN.md §6)", "", f"Seeds per arm: {protocol['seeds']}. Cells: mean ± half the spread "
             "(max − min over seeds); a difference is *shown* when |Δ| exceeds the larger spread.", "",
             "| ablation | claim | metric | base | variant | Δ (variant − base) | shown |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        b, v = r["base"], r["variant"]
        delta = "n/a" if b["mean"] is None or v["mean"] is None else f"{v['mean'] - b['mean']:+.3f}"
        verdict = {True: "yes", False: "no (within spread)", None: "n/a"}[r["shown"]]
        lines.append(
            f"| {r['ablation']} | {r['claim']} | {r['metric']} | {r['base_label']}: {_fmt(b)} | "
            f"{r['variant_label']}: {_fmt(v)} | {delta} | {verdict} |"
        )
    lines += ["", "## Protocol", "", "```json", json.dumps(protocol, indent=2), "```", ""]
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r["section"] != "train"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 5))
    xs = range(len(rows))
    for offset, side, label in ((-0.2, "base", "base"), (0.2, "variant", "variant")):
        means = [r[side]["mean"] or 0 for r in rows]
        errs = [(r[side]["spread"] or 0) / 2 for r in rows]
        ax.bar([x + offset for x in xs], means, width=0.4, yerr=errs, capsize=3, label=label)
    labels = [f"{r['ablation']}: {r['metric']}" for r in rows]
    ax.set_xticks(list(xs), labels, fontsize=8, rotation=35, ha="right")
    ax.set_ylabel("score (GenEval-style / VQA exact match), mean ± half spread")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: AblateArgs) -> dict:
    """Trains and evaluates the base and the chosen variants once per seed; writes the table, the JSON and the plot."""
    chosen = [a for a in ABLATIONS if a.name in args.names]
    arms = list(dict.fromkeys([BASE, *[a.variant for a in chosen]]))
    results = {arm: [_train_and_evaluate(arm, seed, args) for seed in args.seeds] for arm in arms}
    rows = []
    for a in chosen:
        for section, key in a.metrics:
            base = summarise([_value(r, section, key) for r in results[BASE]])
            variant = summarise([_value(r, section, key) for r in results[a.variant]])
            rows.append(
                {
                    "ablation": a.name, "claim": a.claim, "metric": f"{section}/{key}", "section": section,
                    "base_label": a.base_label, "variant_label": a.variant_label, "base": base, "variant": variant,
                    "shown": shown(base, variant),
                }
            )  # fmt: skip
    base_report = results[BASE][0]["report"]
    protocol = {
        "seeds": list(args.seeds),
        "experiments": {
            arm: {"train": [r["train"] for r in runs], "batch_size": runs[0]["batch_size"]}
            for arm, runs in results.items()
        },
        "generation": base_report.get("generation", {}).get("protocol"),
        "understanding": base_report.get("understanding", {}).get("protocol"),
        "equal_budget": "same max_steps, batch size, optimiser and init (ablate_base) for every experiment and seed",
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps({"rows": rows, "protocol": protocol}, indent=2, default=str))
    (out / "ablations.md").write_text(_markdown(rows, protocol))
    _plot(rows, out / "ablations.png")
    return {"table": str(out / "ablations.md"), "plot": str(out / "ablations.png"), "rows": len(rows)}
