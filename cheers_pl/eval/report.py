"""The evaluation report: `report.json` (every number with its protocol), `report.md` and `manifest.json`.

A report is a dict with a top-level `protocol` (checkpoint path and SHA-256, stage, step, split, device, package and
library versions, time) and one entry per section (`generation`, `understanding`, `reconstruction`,
`distribution`). Each section holds its own `protocol` (prompt file hash, seeds, sampler, steps, guidance scale,
α, numbers of prompts / images / questions, split, ...) next to its numbers, or `{"skipped": reason}` when it could
not run. `report.md` renders the same content for people; `manifest.json` lists every output file with its size
and SHA-256, next to the checkpoint's, so a reader can check that a report belongs to a checkpoint.
"""

import hashlib
import json
import math
from pathlib import Path
from typing import Any

REPORT_JSON, REPORT_MD, MANIFEST_JSON = "report.json", "report.md", "manifest.json"
SECTIONS: tuple[str, ...] = ("generation", "understanding", "reconstruction", "retrieval", "distribution")
PROTOCOL_KEYS: tuple[str, ...] = ("checkpoint", "checkpoint_sha256", "stage", "global_step", "split", "created")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _protocol_lines(protocol: dict[str, Any]) -> list[str]:
    return [f"- {key}: `{_fmt(value)}`" for key, value in protocol.items()]


def _scores_table(section: dict[str, Any], first: str) -> list[str]:
    counts = section.get("counts", {})
    rows = []
    for key, value in section.get("scores", {}).items():
        correct_total = counts.get(key)
        rows.append([key, value, f"{correct_total[0]}/{correct_total[1]}" if correct_total else ""])
    return _table([first, "accuracy", "correct/total"], rows)


def _generation_md(section: dict[str, Any]) -> list[str]:
    lines = _scores_table(section, "category")
    for category, grid in section.get("grids", {}).items():
        lines += ["", f"**{category}** — `{grid['file']}` (rows: prompts, columns: images per prompt × seeds)", ""]
        lines += [f"![{category}]({grid['file']})", ""] + [f"{i + 1}. {p}" for i, p in enumerate(grid["prompts"])]
    return lines


def _understanding_md(section: dict[str, Any]) -> list[str]:
    lines = _scores_table(section, "category")
    if section.get("binding"):
        lines += ["", "Binding: attribute questions about one referred object, by the scene's object count, beside the "
                  "accuracy of naming any object's attribute (`any object`) and of naming the scene's most frequent "
                  "value (`scene majority`), and the share of answers that name that value:", ""]  # fmt: skip
        keys = ("questions", "accuracy", "any_object", "scene_majority", "says_majority")
        rows = [
            [category, group, *(m[k] for k in keys), f"{m['wrong_present']}/{m['wrong']}"]
            for category, groups in section["binding"].items()
            for group, m in groups.items()
        ]
        header = ["category", "objects", "questions", "accuracy", "any object", "scene majority", "answers it",
                  "wrong answers in scene"]  # fmt: skip
        lines += _table(header, rows)
    if section.get("examples"):
        lines += ["", "Examples:", ""]
        rows = [[e["category"], e["question"], e["answer"], e["prediction"], e["correct"]] for e in section["examples"]]
        lines += _table(["category", "question", "answer", "prediction", "correct"], rows)
    return lines


def _reconstruction_md(section: dict[str, Any]) -> list[str]:
    rows = []
    for image_set in ("synthetic", "photos"):
        for recon, metrics in section.get(image_set, {}).items():
            rows.append([image_set, recon, metrics["psnr"], metrics["ssim"], metrics["detail_error"]])
    lines = _table(["images", "reconstruction", "PSNR (dB)", "SSIM", "detail error"], rows)
    parser = section.get("synthetic_parser")
    if parser:
        keys = ["shape", "color", "texture", "digit_objects", "count", "all"]
        lines += ["", "Scene parser on the reconstructions of the synthetic scenes (share of objects recovered):", ""]
        lines += _table(["reconstruction", *keys], [[name, *(m[k] for k in keys)] for name, m in parser.items()])
    for name, grid in section.get("grids", {}).items():
        lines += ["", f"![{name}]({grid})"]
    return lines


def _distribution_md(section: dict[str, Any]) -> list[str]:
    lines = []
    for name, entry in section.items():
        if name == "protocol":
            continue
        if "skipped" in entry:
            lines.append(f"- {name}: skipped — {entry['skipped']}")
        else:
            lines.append(f"- {name}: **{_fmt(entry['value'])}**")
            lines += ["  " + line for line in _protocol_lines(entry.get("protocol", {}))]
    return lines


def _retrieval_md(section: dict[str, Any]) -> list[str]:
    s = section["scores"]
    return [f"- image→caption top-1 among {s['num_candidates']}: **{_fmt(s['top1'])}** (chance {_fmt(s['chance'])}, "
            f"mean over {s['num_groups']} groups)"]  # fmt: skip


_RENDERERS = {
    "generation": ("Generation (GenEval-style, detector-free)", _generation_md),
    "understanding": ("Understanding (VQA exact match)", _understanding_md),
    "reconstruction": ("Reconstruction (vision tokenizer)", _reconstruction_md),
    "retrieval": ("Retrieval (contrastive towers)", _retrieval_md),
    "distribution": ("Distribution metrics (FID / CLIP score)", _distribution_md),
}


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable report: protocol, then each section's numbers and protocol (or why it was skipped)."""
    lines = ["# cheers_pl evaluation report", "", "## Protocol", ""] + _protocol_lines(report["protocol"])
    for key in SECTIONS:
        if key not in report:
            continue
        title, render = _RENDERERS[key]
        section = report[key]
        lines += ["", f"## {title}", ""]
        if "skipped" in section:
            lines.append(f"Skipped: {section['skipped']}")
            continue
        lines += render(section)
        if section.get("protocol"):
            lines += ["", "Protocol:", ""] + _protocol_lines(section["protocol"])
    return "\n".join(lines) + "\n"


def check_report(report: dict[str, Any]) -> None:
    """Raises ValueError when the top-level protocol lacks a field or a section is missing."""
    missing = [k for k in PROTOCOL_KEYS if k not in report.get("protocol", {})]
    missing += [s for s in SECTIONS if s not in report]
    if missing:
        raise ValueError(f"report is missing {missing}")


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Writes report.json, report.md and manifest.json (every file under `out_dir` with size and SHA-256).

    Returns:
        {"report_json", "report_md", "manifest"} paths.
    """
    check_report(report)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"report_json": out / REPORT_JSON, "report_md": out / REPORT_MD, "manifest": out / MANIFEST_JSON}
    paths["report_json"].write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    paths["report_md"].write_text(render_markdown(report))
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST_JSON)
    manifest = {
        "protocol": {k: report["protocol"][k] for k in PROTOCOL_KEYS},
        "files": {str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
    }
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
    return paths
