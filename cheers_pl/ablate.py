"""`ablate`: the paper's claims (DESIGN.md §6) as pairs of experiments trained at an equal budget and evaluated
with one protocol → `ablations.json`, `ablations.md` (table with the protocol) and `ablations.png`.

Each ablation is `conf/experiment/ablate_<variant>.yaml`, a one-value change of `ablate_base.yaml`; this module only
runs `train.run` and `evaluate.run` on them and tabulates the metrics the claim is about.
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
    per_category: int = 4
    images_per_prompt: int = 1
    max_vqa: int = 256
    num_steps: int | None = None  # sampling steps (default: the stage's)
    reuse: bool = False  # skip training when the variant's last.ckpt exists
    overrides: list[str] = field(default_factory=list)  # applied to every experiment (e.g. data.shard_dir=...)

    def __post_init__(self) -> None:
        known = {a.name for a in ABLATIONS}
        unknown = set(self.names) - known
        if unknown:
            raise ValueError(f"names: unknown ablations {sorted(unknown)}; known: {sorted(known)}")


def _train_and_evaluate(experiment: str, args: AblateArgs) -> dict:
    overrides = [f"output_root={args.out_dir}", "trainer.enable_progress_bar=false", *args.overrides]
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


def _markdown(rows: list[dict], protocol: dict) -> str:
    lines = ["# Ablations (DESIGN.md §6)", "", "| ablation | claim | metric | base | variant | Δ (variant − base) |"]
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        b, v = r["base_value"], r["variant_value"]
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        delta = "n/a" if b is None or v is None else f"{v - b:+.3f}"
        lines.append(
            f"| {r['ablation']} | {r['claim']} | {r['metric']} | {r['base_label']}: {fmt(b)} | "
            f"{r['variant_label']}: {fmt(v)} | {delta} |"
        )
    lines += ["", "## Protocol", "", "```json", json.dumps(protocol, indent=2), "```", ""]
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    rows = [r for r in rows if r["section"] != "train"]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 5))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["base_value"] or 0 for r in rows], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [r["variant_value"] or 0 for r in rows], width=0.4, label="variant")
    labels = [f"{r['ablation']}: {r['metric']}" for r in rows]
    ax.set_xticks(list(xs), labels, fontsize=8, rotation=35, ha="right")
    ax.set_ylabel("score (GenEval-style / VQA exact match)")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(args: AblateArgs) -> dict:
    """Trains and evaluates the base and the chosen variants; writes the table, the JSON and the plot."""
    chosen = [a for a in ABLATIONS if a.name in args.names]
    results = {name: _train_and_evaluate(name, args) for name in dict.fromkeys([BASE, *[a.variant for a in chosen]])}
    rows = []
    for a in chosen:
        for section, key in a.metrics:
            rows.append(
                {
                    "ablation": a.name, "claim": a.claim, "metric": f"{section}/{key}", "section": section,
                    "base_label": a.base_label, "variant_label": a.variant_label,
                    "base_value": _value(results[BASE], section, key),
                    "variant_value": _value(results[a.variant], section, key),
                }
            )  # fmt: skip
    base_report = results[BASE]["report"]
    protocol = {
        "experiments": {name: {"train": r["train"], "batch_size": r["batch_size"]} for name, r in results.items()},
        "generation": base_report.get("generation", {}).get("protocol"),
        "understanding": base_report.get("understanding", {}).get("protocol"),
        "equal_budget": "same max_steps, batch size, optimiser and init (ablate_base) for every experiment",
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablations.json").write_text(json.dumps({"rows": rows, "protocol": protocol}, indent=2, default=str))
    (out / "ablations.md").write_text(_markdown(rows, protocol))
    _plot(rows, out / "ablations.png")
    return {"table": str(out / "ablations.md"), "plot": str(out / "ablations.png"), "rows": len(rows)}
