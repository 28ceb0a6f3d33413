"""The `diagnose` command: what limits a checkpoint, one number per question → `diagnose.json` + `diagnose.md`.

`python -m cheers_pl diagnose ckpt=runs/tiny_generation/checkpoints/last.ckpt [parts=[probes,binding,flow,profile]]`
- probes (1a): what the frozen tokenizer carries (`cheers_pl.diagnose.probes`);
- binding (1b): can the LLM path bind image tokens to answers (`cheers_pl.diagnose.overfit.run_binding`);
- flow (1c): can the flow head + sampler reproduce a few fitted scenes (`run_flow_overfit`);
- profile (1d): where the time of a training step goes, per stage (`cheers_pl.diagnose.profile`);
- conditioning (1e): does the prompt reach the flow head, how the HFI sum is balanced, and does the prompt lower the
  error of the data estimate (`cheers_pl.diagnose.conditioning`; a checkpoint without a text pipeline reports it as
  skipped);
- steering (1f): can the prompt steer colour and shape of a fixed layout (`run_prompt_steering`);
- counterfactual (1g): does an answer about a named object come from that object, or from any object of the scene
  (`cheers_pl.diagnose.counterfactual`; the checkpoint's own LLM, so a tokenizer checkpoint reports it as skipped).
A tokenizer-stage checkpoint has no LLM: binding, flow and steering then start from `fit_experiment` (default
`tiny_align`) with `init_from=ckpt`, i.e. its tokenizer under a fresh LLM and head. The profile builds each
experiment of `profile_experiments` from its config (random weights: timing depends on shapes, not values) and times
cold steps and, where the stage caches frozen features, the same batches again (warm).
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cheers_pl.checkpoint import read_checkpoint
from cheers_pl.config import compose, config_of_checkpoint
from cheers_pl.data.datamodule import CheersDataModule
from cheers_pl.diagnose.conditioning import prompt_gain, recovery_by_noise_level, run_conditioning
from cheers_pl.diagnose.counterfactual import run_counterfactual
from cheers_pl.diagnose.locality import (
    BINDING_CATEGORIES,
    DEFAULT_BINDING_CATEGORIES,
    DEFAULT_TOKEN_SOURCES,
    SUMMARY_TARGETS,
    TOKEN_SOURCES,
    check_binding_choice,
    run_scene_summary,
    run_token_binding,
)
from cheers_pl.diagnose.overfit import run_binding, run_flow_overfit, run_prompt_steering
from cheers_pl.diagnose.probes import run_probes
from cheers_pl.diagnose.profile import profile_stage
from cheers_pl.restore import load_stage
from cheers_pl.stage import build_stage

PARTS = ("probes", "binding", "flow", "profile", "conditioning", "steering", "counterfactual", "summary", "tokens")


@dataclass
class DiagnoseArgs:
    """Arguments of `python -m cheers_pl diagnose`."""

    ckpt: str = "???"
    out_dir: str | None = None  # default: <run dir>/diagnose
    parts: list[str] = field(default_factory=lambda: list(PARTS))
    fit_experiment: str = "tiny_align"  # for binding / flow / steering when the checkpoint's stage has no LLM
    profile_experiments: list[str] = field(default_factory=lambda: ["tiny_tokenizer", "tiny_align", "tiny_generation"])
    probe_train_scenes: int = 1500
    probe_test_scenes: int = 400
    binding_steps: int = 300
    flow_steps: int = 400
    steering_steps: int = 200
    profile_steps: int = 6
    conditioning_scenes: int = 16
    recovery_scenes: int = 32
    gain_scenes: int = 64  # 1e: scenes whose x̂1 error is measured with their own and another caption
    counterfactual_questions: int = 128  # per attribute (colour, shape, texture)
    token_binding_steps: int = 1000  # 1i: steps of each fresh LLM (three token sources; ~90 s per 1000 on 2 cores)
    token_binding_sources: list[str] = field(default_factory=lambda: list(DEFAULT_TOKEN_SOURCES))
    # question categories the fresh LLM learns and is scored on (also "relation")
    token_binding_categories: list[str] = field(default_factory=lambda: list(DEFAULT_BINDING_CATEGORIES))
    token_binding_train_scenes: int = 4000
    token_binding_lr: float | None = None  # default: the LR of the stage the LLM is fitted in (align: 1e-3)
    # the fresh learner only: LLMConfig fields (token_binding_llm.num_layers=4) and compression factor (1 = none)
    token_binding_llm: dict[str, Any] = field(default_factory=dict)
    token_binding_compression: int | None = None
    overrides: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ValueError(f"parts: unknown {sorted(unknown)}; parts: {list(PARTS)}")
        # checked here too, so that a misspelt 1i key fails before the checkpoint is loaded
        check_binding_choice("token_binding_sources", self.token_binding_sources, TOKEN_SOURCES)
        check_binding_choice("token_binding_categories", self.token_binding_categories, BINDING_CATEGORIES)


def _out_dir(args: DiagnoseArgs) -> Path:
    if args.out_dir is not None:
        return Path(args.out_dir)
    parent = Path(args.ckpt).resolve().parent
    return (parent.parent if parent.name == "checkpoints" else parent) / "diagnose"


def _fit_stage(args: DiagnoseArgs, stage: Any) -> Any:
    if hasattr(stage, "answer"):
        return stage
    cfg = compose(args.fit_experiment, [f"stage.init_from={args.ckpt}", *args.overrides])
    return build_stage(cfg)


def _profile(args: DiagnoseArgs, shard_overrides: list[str]) -> dict[str, Any]:
    out = {}
    for experiment in args.profile_experiments:
        cfg = compose(experiment, ["stage.init_from=null", *shard_overrides])
        stage = build_stage(cfg)
        loader = iter(CheersDataModule(cfg.data, rank=0, world_size=1).train_dataloader())
        batches = [next(loader) for _ in range(args.profile_steps + 2)]
        entry = {"cold": profile_stage(stage, iter(batches), args.profile_steps, warmup=2)}
        caches = [getattr(stage, name, None) for name in ("latent_cache", "semantic_cache")]
        if any(c is not None and c.enabled for c in caches):
            entry["warm"] = profile_stage(stage, iter(batches), args.profile_steps, warmup=2)
        out[experiment] = entry
    return out


def run(args: DiagnoseArgs) -> dict[str, Any]:
    """Runs the requested parts and writes the report; returns its paths and headline numbers."""
    started = time.perf_counter()
    ckpt = read_checkpoint(args.ckpt)
    cfg = config_of_checkpoint(ckpt, ["stage.init_from=null", *args.overrides], args.ckpt)
    stage = load_stage(args.ckpt, args.overrides, ckpt=ckpt)
    del ckpt
    world = cfg.data.synthetic
    report: dict[str, Any] = {
        "protocol": {"checkpoint": str(Path(args.ckpt).resolve()), "stage": cfg.stage.name, "parts": args.parts,
                     "torch_threads": torch.get_num_threads()},
    }  # fmt: skip
    if "probes" in args.parts:
        report["probes"] = run_probes(stage.model.vision, world, args.probe_train_scenes, args.probe_test_scenes)
    if "summary" in args.parts:
        scenes = (args.probe_train_scenes, args.probe_test_scenes)
        report["summary"] = run_scene_summary(stage.model.vision, world, *scenes)
    if {"binding", "flow", "steering", "tokens"} & set(args.parts):
        fit = _fit_stage(args, stage)
        report["protocol"]["fit_stage"] = fit.cfg.name if fit is not stage else cfg.name
        if "binding" in args.parts:
            report["binding"] = run_binding(fit, world, steps=args.binding_steps)
        if "flow" in args.parts:
            report["flow"] = run_flow_overfit(fit, world, steps=args.flow_steps)
        if "steering" in args.parts:
            report["steering"] = run_prompt_steering(fit, world, steps=args.steering_steps)
        if "tokens" in args.parts:
            report["tokens"] = run_token_binding(
                fit, world, steps=args.token_binding_steps, num_train=args.token_binding_train_scenes,
                lr=fit.stage_cfg.optim.lr if args.token_binding_lr is None else args.token_binding_lr,
                sources=tuple(args.token_binding_sources),
                llm_overrides=args.token_binding_llm, compression=args.token_binding_compression,
                categories=tuple(args.token_binding_categories),
            )  # fmt: skip
    if "conditioning" in args.parts:
        pipeline = getattr(stage, "pipeline", None)
        if pipeline is None:
            report["conditioning"] = {"skipped": f"stage {cfg.stage.name!r} has no text pipeline (no flow head)"}
        else:
            report["conditioning"] = run_conditioning(pipeline, world, args.conditioning_scenes)
            report["conditioning"]["recovery"] = recovery_by_noise_level(pipeline, world, args.recovery_scenes)
            report["conditioning"]["prompt_gain"] = prompt_gain(pipeline, world, args.gain_scenes)
    if "counterfactual" in args.parts:
        if not hasattr(stage, "answer"):
            report["counterfactual"] = {"skipped": f"stage {cfg.stage.name!r} has no LLM to ask"}
        else:
            report["counterfactual"] = run_counterfactual(stage, world, args.counterfactual_questions)
    if "profile" in args.parts:
        report["profile"] = _profile(args, [f"data.shard_dir={cfg.data.shard_dir}"])
    report["protocol"]["wall_s"] = round(time.perf_counter() - started, 1)
    out = _out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnose.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "diagnose.md").write_text(markdown(report))
    return {"json": str(out / "diagnose.json"), "markdown": str(out / "diagnose.md"), **headline(report)}


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The one-number answers of each part."""
    out: dict[str, Any] = {}
    if "probes" in report:
        for feature, entry in report["probes"]["probes"].items():
            for target in ("shape", "color", "count"):
                out[f"probe/{feature}/{target}"] = entry[target]["mlp"]["accuracy"]
        out["decoder_t1/psnr"] = report["probes"]["decoder_t1"]["psnr_decoder_t1"]
        for t, r2 in report["probes"].get("noise_r2", {}).items():
            out[f"noise_r2/{t}/detail"], out[f"noise_r2/{t}/z_t"] = r2["detail"], r2["z_t"]
    if "binding" in report:
        out["binding/image"] = report["binding"]["image"]["final"]
        out["binding/blank"] = report["binding"]["blank"]["final"]
        out["binding/chance"] = report["binding"]["chance"]
    if "flow" in report:
        out["flow/parsed_back"] = report["flow"]["final"]
    if "steering" in report:
        last = report["steering"]["curve"][-1]
        out["steering/shape"], out["steering/color"] = last["shape"], last["color"]
    for attribute, entry in report.get("counterfactual", {}).items():
        if attribute not in ("protocol", "skipped"):
            out[f"counterfactual/{attribute}/follows_referred"] = entry["follows_referred"]
            out[f"counterfactual/{attribute}/names_other"] = entry["names_other"]
    for feature, entry in report.get("summary", {}).get("probes", {}).items():
        out[f"summary/{feature}/color"] = entry["color"]["linear"]["accuracy"]
    for source in TOKEN_SOURCES:
        for category, value in report.get("tokens", {}).get(source, {}).get("final", {}).items():
            out[f"tokens/{source}/{category}"] = value
    for t, entry in report.get("conditioning", {}).get("per_t", {}).items():
        out[f"conditioning/{t}/head_change"] = entry["head_change"]
        out[f"conditioning/{t}/hfi_ratio"] = round(entry["gs_norm"] / max(entry["z_norm"], 1e-12), 3)
    for t0, entry in report.get("conditioning", {}).get("recovery", {}).items():
        out[f"recovery/{t0}/all"] = entry["all"]
    for t, entry in report.get("conditioning", {}).get("prompt_gain", {}).items():
        out[f"conditioning/{t}/prompt_gain"] = entry["gain"]
    return out


def _probe_table(probes: dict[str, Any]) -> list[str]:
    targets = list(next(iter(probes.values())))
    lines = ["| features | " + " | ".join(targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for feature, entry in probes.items():
        cells = [f"{entry[t]['linear']['accuracy']:.2f} / {entry[t]['mlp']['accuracy']:.2f}" for t in targets]
        lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    chance = [f"{next(iter(probes.values()))[t]['linear']['chance']:.2f}" for t in targets]
    lines.append("| chance (majority) | " + " | ".join(chance) + " |")
    return lines


def _counterfactual_md(cf: dict[str, Any]) -> list[str]:
    lines = ["## 1g Does the answer come from the object the question names (edits of test scenes)", ""]
    if "skipped" in cf:
        return [*lines, f"skipped: {cf['skipped']}", ""]
    lines += ["Each question about one named object of a multi-object test scene, asked of the scene, of the scene "
              "with the named object's asked attribute changed to a new value, and of the scene with another object "
              "given that value instead:", "",
              "| attribute | questions | right, original | follows the named object's edit | unchanged under the "
              "other's edit | names the other's new value |", "|---|---|---|---|---|---|"]  # fmt: skip
    for attribute, e in cf.items():
        if attribute != "protocol":
            lines.append(f"| {attribute} | {e['questions']} | {e['original']:.2f} | {e['follows_referred']:.2f} | "
                         f"{e['keeps_under_other']:.2f} | {e['names_other']:.2f} |")  # fmt: skip
    return [*lines, ""]


def _locality_md(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "summary" in report:
        probes = report["summary"]["probes"]
        lines += ["## 1h Does every token carry the whole scene (probes on tokens no object touches)", "",
                  "The first object's attributes (reading order) read from the empty token farthest from it, one per "
                  "test scene of two or more objects, linear / MLP:", "",
                  "| features | grid | " + " | ".join(SUMMARY_TARGETS) + " |",
                  "|---|---|" + "---|" * len(SUMMARY_TARGETS)]  # fmt: skip
        for feature, entry in probes.items():
            cells = [f"{entry[t]['linear']['accuracy']:.2f} / {entry[t]['mlp']['accuracy']:.2f}"
                     for t in SUMMARY_TARGETS]  # fmt: skip
            lines.append(f"| {feature} | {entry['grid']}×{entry['grid']} | " + " | ".join(cells) + " |")
        chance = [f"{next(iter(probes.values()))[t]['linear']['chance']:.2f}" for t in SUMMARY_TARGETS]
        lines += ["| chance (majority) | | " + " | ".join(chance) + " |", ""]
    if "tokens" in report:
        tokens, p = report["tokens"], report["tokens"]["protocol"]
        categories = p.get("categories", DEFAULT_BINDING_CATEGORIES)
        learner = ", ".join(f"{k} {v}" for k, v in p.get("llm_overrides", {}).items()) or "the stage's config"
        lines += ["## 1i Does a fresh LLM bind over local tokens, and does a scene summary in every token stop it", "",
                  f"Teacher-forced exact match on test questions after {p['steps']} steps (batch {p['batch_size']}, "
                  f"LR {p['lr']}, {p['num_train_scenes']} train scenes; LLM: {learner}; compression "
                  f"{p.get('compression', '')}; attribute questions of scenes with two or more objects):", "",
                  "| tokens | " + " | ".join(categories) + " | seconds |",
                  "|---|" + "---|" * (len(categories) + 1)]  # fmt: skip
        for source in (s for s in TOKEN_SOURCES if s in tokens):
            e = tokens[source]
            cells = [f"{e['final'].get(c, float('nan')):.2f}" for c in categories]
            lines.append(f"| {source} | " + " | ".join(cells) + f" | {e['seconds']} |")
        lines.append("")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one section per part, each number with its protocol."""
    lines = ["# Diagnosis", "", "```json", json.dumps(report["protocol"], indent=2), "```", ""]
    if "probes" in report:
        p = report["probes"]
        lines += ["## 1a What the tokenizer carries (probe accuracy, linear / MLP, test scenes)", ""]
        lines += _probe_table(p["probes"])
        d = p["decoder_t1"]
        rec = ", ".join(f"{k} {v:.3f}" for k, v in d["parser_recovery"].items())
        lines += ["", f"D at t = 1: PSNR {d['psnr_decoder_t1']:.2f} dB; scene parser on D(x1): {rec}", ""]
        if "noise_r2" in p:
            cells = "; ".join(f"{t}: S(D(z_t)) {r['detail']:.3f}, z_t {r['z_t']:.3f}, both {r['both']:.3f}"
                              for t, r in p["noise_r2"].items())  # fmt: skip
            lines += [f"Noise x0 the flow head can see (R² of a linear probe per latent position): {cells}", ""]
        if "noise_objects" in p:
            o = p["noise_objects"]
            cells = "; ".join(f"{k}: {v}" for k, v in o.items() if k != "true")
            lines += [f"Objects the scene parser finds in D(z_t) of the test scenes (mean per image; true count "
                      f"{o['true']}): {cells}", ""]  # fmt: skip
    if "binding" in report:
        b = report["binding"]
        lines += ["## 1b Binding image tokens to answers (64 examples, the same questions of different images)", ""]
        lines.append(f"questions: {b['questions']}")
        for name in ("image", "blank"):
            r = b[name]
            lines.append(f"- {name}: exact match {r['final']:.3f} (reached 0.98 at step {r['reached_at_step']}; "
                         f"{r['seconds']} s)")  # fmt: skip
        lines += [f"- chance (per-question majority): {b['chance']:.3f}", ""]
    if "flow" in report:
        f = report["flow"]
        lines += ["## 1c Flow head + sampler on fitted scenes", ""]
        lines.append(f"- parsed back (shape, colour, count of every object): {f['final']:.2f} over {len(f['prompts'])}"
                     f" scenes; curve {f['curve']}; sampler {f['sampling']}")  # fmt: skip
        lines.append("")
    if "conditioning" in report:
        c = report["conditioning"]
        lines += ["## 1e Does the prompt reach the flow head, and where does sampling lose the scene", ""]
        if "skipped" in c:
            lines += [f"skipped: {c['skipped']}", ""]
        else:
            lines += [f"Guidance off; {c['num_scenes']} test scenes, each row's caption swapped for another's; change "
                      "of the stage-1 output and of the head's output, and the HFI sum's terms ‖Z'‖, ‖g·S‖, mean g:",
                      "", "| t | stage 1 change | head change | ‖Z'‖ | ‖g·S‖ | mean g |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for t, e in c["per_t"].items():
                lines.append(f"| {t[2:]} | {e['stage1_change']:.3f} | {e['head_change']:.3f} | {e['z_norm']:.2f} | "
                             f"{e['gs_norm']:.2f} | {e['gate_mean']:.2f} |")  # fmt: skip
            lines += [
                "",
                "Sampled from test scenes noised to t0 (their captions, the stage's sampler and guidance): "
                "share of objects whose shape / colour the parser recovers, images with the right count, "
                "objects right in every attribute:",
                "",
                "| t0 | shape | colour | count | all |",
                "|---|---|---|---|---|",
            ]
            for t0, e in c["recovery"].items():
                lines.append(f"| {t0[3:]} | {e['shape']:.2f} | {e['color']:.2f} | {e['count']:.2f} | {e['all']:.2f} |")
            lines.append("")
            if "prompt_gain" in c:  # reports written before it was measured have no table
                lines += ["Does the prompt make the prediction better: error of x̂1 = z_t + (1 − t)·v̂ with the scene's "
                          "own caption and with another scene's (guidance off), and the gain 1 − own / other "
                          "(0: the head ignores what the prompt says):", "",
                          "| t | own | other | gain | Var(x1) |", "|---|---|---|---|---|"]  # fmt: skip
                for t, e in c["prompt_gain"].items():
                    lines.append(f"| {t[2:]} | {e['x1_error_own']:.3f} | {e['x1_error_other']:.3f} | "
                                 f"{e['gain']:.3f} | {e['x1_var']:.3f} |")  # fmt: skip
                lines.append("")
    if "steering" in report:
        st = report["steering"]
        lines += [
            f'## 1f Can the prompt steer a fixed layout ({len(st["prompts"])} prompts "a <colour> <shape>", '
            "one large solid object at the centre)",
            "",
            f"Share of samples with one object, the right shape, the right colour (stage's sampler {st['sampling']}, "
            "seed 0):",
            "",
            "| samples | step | loss | one object | shape | colour |",
            "|---|---|---|---|---|---|",
        ]
        for point in st["curve"]:
            lines.append(f"| stage's sampler | {point['step']} | {point['loss']:.3f} | "
                         f"{point['one_object']:.2f} | {point['shape']:.2f} | {point['color']:.2f} |")  # fmt: skip
        for name, label in (("guidance_1", "guidance 1"), ("one_step", "one-step x̂1 from noise")):
            r = st[name]
            lines.append(f"| {label} | end | | {r['one_object']:.2f} | {r['shape']:.2f} | {r['color']:.2f} |")
        lines.append("")
    if "counterfactual" in report:
        lines += _counterfactual_md(report["counterfactual"])
    lines += _locality_md(report)
    if "profile" in report:
        lines += ["## 1d Where the time of a training step goes (share of wall time)", ""]
        for experiment, entry in report["profile"].items():
            for kind, prof in entry.items():
                shares = ", ".join(f"{k} {v:.0%}" for k, v in prof["share"].items())
                lines.append(f"- {experiment} ({kind}): {prof['step_s']} s/step at batch {prof['batch_size']}, "
                             f"{prof['samples_per_s']} samples/s: {shares}")  # fmt: skip
        lines.append("")
    return "\n".join(lines)
