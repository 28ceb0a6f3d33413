"""The diagnose command (issue 12's 1a–1d) on small sizes: its parts, its report files, and probes that could fail."""

import json
from pathlib import Path

import pytest
import torch

from cheers_pl.checkpoint import CONFIG_KEY
from cheers_pl.cli import main
from cheers_pl.config import compose, to_yaml
from cheers_pl.data.synthetic_scene import Scene, SyntheticConfig
from cheers_pl.diagnose.probes import run_probes
from cheers_pl.diagnose.run import DiagnoseArgs
from cheers_pl.stage import build_stage
from tests._models import FROM_TINY_TOKENIZER


@pytest.fixture(scope="module")
def tokenizer_ckpt(shard_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tokenizer-stage checkpoint holding the committed tiny tokenizer's weights."""
    cfg = compose("tiny_tokenizer", [f"data.shard_dir={shard_dir}", "data.num_workers=0", *FROM_TINY_TOKENIZER])
    stage = build_stage(cfg)
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": stage.state_dict(), CONFIG_KEY: to_yaml(cfg), "global_step": 1}, path)
    return path


def test_probes_find_what_the_committed_tokenizer_carries(tokenizer_ckpt: Path) -> None:
    """Colour is in the pixels and in the trained semantic tokens far above the majority rate; the report holds
    every target for every feature set, and D(x1) reconstructs the scenes."""
    from cheers_pl.restore import load_stage

    stage = load_stage(str(tokenizer_ckpt))
    out = run_probes(stage.model.vision, SyntheticConfig(), num_train=200, num_test=80, steps=40, phantom_scenes=16)
    probes = out["probes"]
    assert set(probes) == {"pixels", "semantic", "llm"}
    for feature in ("pixels", "semantic"):
        colour = probes[feature]["color"]["mlp"]
        assert colour["accuracy"] > colour["chance"] + 0.3, (feature, colour)
    assert set(probes["semantic"]) == {"shape", "color", "texture", "size", "digit", "region", "count"}
    assert out["decoder_t1"]["psnr_decoder_t1"] > 30
    assert out["decoder_t1"]["parser_recovery"]["color"] > 0.9
    noise = out["noise_r2"]
    assert set(noise) == {"t=0.3", "t=0.7"}
    # the reference can fail: z_t = t·x1 + (1 − t)·x0 holds x0 linearly, more of it the closer t is to noise
    assert noise["t=0.3"]["z_t"] > 0.6 and noise["t=0.3"]["z_t"] > noise["t=0.7"]["z_t"], noise
    assert all(r["both"] >= max(r["detail"], r["z_t"]) - 0.02 for r in noise.values()), noise
    # the committed D renders pure noise as object-like fragments: the parser finds objects where there are none
    phantoms = out["noise_objects"]
    assert set(phantoms) == {"true", "t=0.0", "t=0.3"} and 1 <= phantoms["true"] <= 4, phantoms
    assert phantoms["t=0.0"] > phantoms["true"], phantoms


def test_cli_profile_part_writes_both_reports(tokenizer_ckpt: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "diag"
    code = main(["diagnose", f"ckpt={tokenizer_ckpt}", "parts=[profile]", f"out_dir={out_dir}", "profile_steps=2",
                 "profile_experiments=[tiny_align]"])  # fmt: skip
    assert code == 0
    report = json.loads((out_dir / "diagnose.json").read_text())
    entry = report["profile"]["tiny_align"]
    assert set(entry) == {"cold", "warm"}  # tiny_align caches frozen results: the warm pass reads the cache
    shares = entry["cold"]["share"]
    assert abs(sum(shares.values()) - 1.0) < 0.02, shares
    assert all(shares.get(k, 0) > 0 for k in ("vae_encode", "pixel_decoder", "semantic_encoder", "llm", "flow_head"))
    assert "vae_encode" not in entry["warm"]["share"]  # every latent came from the cache
    assert "1d Where the time" in (out_dir / "diagnose.md").read_text()


def test_unknown_part_is_an_error() -> None:
    with pytest.raises(ValueError, match="parts"):
        DiagnoseArgs(ckpt="x", parts=["probes", "vibes"])


def test_conditioning_measures_prompt_sensitivity_and_the_hfi_sum() -> None:
    """1e: with every path carrying signal the prompt moves stage 1 and the head, and the HFI term is measured;
    switching the gate off (its last layer zeroed) leaves Z' as it was and makes g·S exactly zero."""
    from torch import nn

    from cheers_pl.diagnose.conditioning import run_conditioning
    from tests._models import perturbed_pipeline

    pipe = perturbed_pipeline(llm_noise=0.05)
    world = SyntheticConfig()
    out = run_conditioning(pipe, world, num_scenes=4, ts=(0.0, 0.5))
    assert set(out["per_t"]) == {"t=0.0", "t=0.5"}
    for entry in out["per_t"].values():
        assert entry["stage1_change"] > 1e-4 and entry["head_change"] > 1e-4, entry
        assert entry["z_norm"] > 0 and entry["gs_norm"] > 0 and entry["gate_mean"] != 0, entry
    gate = pipe.model.flow_head.hfi.gate[-1]
    nn.init.zeros_(gate.weight)
    nn.init.zeros_(gate.bias)
    off = run_conditioning(pipe, world, num_scenes=4, ts=(0.0, 0.5))
    for t, entry in off["per_t"].items():
        assert entry["gs_norm"] == 0 and entry["gate_mean"] == 0, entry
        assert entry["z_norm"] == pytest.approx(out["per_t"][t]["z_norm"], rel=1e-4)
    with pytest.raises(ValueError, match="num_scenes"):
        run_conditioning(pipe, world, num_scenes=1)


def test_cli_conditioning_part_is_skipped_without_a_flow_head(tokenizer_ckpt: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "diag"
    assert main(["diagnose", f"ckpt={tokenizer_ckpt}", "parts=[conditioning]", f"out_dir={out_dir}"]) == 0
    report = json.loads((out_dir / "diagnose.json").read_text())
    assert "no text pipeline" in report["conditioning"]["skipped"]
    assert "skipped" in (out_dir / "diagnose.md").read_text()


def test_recovery_by_noise_level_scores_what_the_sampler_lands_on(tokenizer_ckpt: Path) -> None:
    """An oracle field that flies straight to each scene's own latent recovers the scenes from every t0 (the
    committed tokenizer's VAE keeps them); the same field aimed at the next scene's latent does not."""
    from types import SimpleNamespace

    from cheers_pl.diagnose.conditioning import recovery_by_noise_level
    from cheers_pl.diagnose.probes import scenes
    from cheers_pl.objective.sampling import SamplingConfig
    from cheers_pl.restore import load_stage

    vision = load_stage(str(tokenizer_ckpt)).model.vision
    world = SyntheticConfig()
    with torch.no_grad():
        x1 = vision.encode(scenes(world, "test", 8, in_distribution=True)[0])

    def pipeline(target: torch.Tensor) -> SimpleNamespace:
        def field(z: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
            return (target - z) / (1 - t_B).reshape(-1, 1, 1, 1)

        sampling = SamplingConfig(num_steps=4, guidance_scale=1.0)
        return SimpleNamespace(model=SimpleNamespace(vision=vision, parameters=vision.parameters), sampling=sampling,
                               velocity_fn=lambda prompts, scale: field)  # fmt: skip

    right = recovery_by_noise_level(pipeline(x1), world, num_scenes=8, t0s=(0.0, 0.5))
    wrong = recovery_by_noise_level(pipeline(x1.roll(1, dims=0)), world, num_scenes=8, t0s=(0.0,))
    assert set(right) == {"t0=0.0", "t0=0.5"}
    for entry in right.values():
        assert entry["shape"] >= 0.95 and entry["color"] >= 0.95, entry
    assert wrong["t0=0.0"]["all"] < 0.5, wrong


def test_prompt_gain_is_one_for_a_field_that_draws_its_prompt_and_zero_for_a_blind_one(tokenizer_ckpt: Path) -> None:
    """1e's gain: a field that flies to the latent its caption describes has no error with its own caption (gain 1);
    a field that ignores the prompt has the same error with any caption (gain exactly 0)."""
    from types import SimpleNamespace

    from cheers_pl.diagnose.conditioning import _captioned_scenes, prompt_gain
    from cheers_pl.restore import load_stage

    vision = load_stage(str(tokenizer_ckpt)).model.vision
    world = SyntheticConfig()
    images, _, prompts = _captioned_scenes(world, 6, 0)
    with torch.no_grad():
        x1 = vision.encode(images)
    by_prompt = dict(zip(prompts, x1, strict=True))

    def pipeline(draws_prompt: bool) -> SimpleNamespace:
        def velocity_fn(batch_prompts: list[str], scale: float):
            target = torch.stack([by_prompt[p] for p in batch_prompts]) if draws_prompt else x1.mean(0, keepdim=True)

            def field(z: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
                return (target - z) / (1 - t_B).reshape(-1, 1, 1, 1)

            return field

        return SimpleNamespace(model=SimpleNamespace(vision=vision, parameters=vision.parameters),
                               velocity_fn=velocity_fn)  # fmt: skip

    drawn = prompt_gain(pipeline(True), world, num_scenes=6, ts=(0.0, 0.5))
    blind = prompt_gain(pipeline(False), world, num_scenes=6, ts=(0.0, 0.5))
    for t in ("t=0.0", "t=0.5"):
        assert drawn[t]["x1_error_own"] < 1e-8 and drawn[t]["x1_error_other"] > 0.1, drawn[t]
        assert drawn[t]["gain"] == pytest.approx(1.0)
        assert blind[t]["gain"] == 0.0 and blind[t]["x1_error_own"] == blind[t]["x1_error_other"], blind[t]
    with pytest.raises(ValueError, match="num_scenes"):
        prompt_gain(pipeline(True), world, num_scenes=1)
    # the report: a table and headline numbers; a report written before the gain was measured still renders
    from cheers_pl.diagnose.run import headline, markdown

    conditioning = {"num_scenes": 6, "per_t": {}, "recovery": {}, "prompt_gain": drawn}
    report = {"protocol": {"checkpoint": "x"}, "conditioning": conditioning}
    assert "| 0.5 | 0.000 |" in markdown(report) and headline(report)["conditioning/t=0.0/prompt_gain"] == 1.0
    del conditioning["prompt_gain"]
    assert "gain" not in markdown(report) and not any("prompt_gain" in k for k in headline(report))


def test_steering_targets_parse_back_and_the_part_reports_each_attribute(tokenizer_ckpt: Path, shard_dir: Path) -> None:
    """1f's targets are what its score reads (the parser recovers each rendered object's shape and colour), and the
    part reports the one-object, shape and colour shares per evaluation, at guidance 1 and for the one-step estimate."""
    import dataclasses

    import numpy as np

    from cheers_pl.data.synthetic_render import render
    from cheers_pl.diagnose.overfit import run_prompt_steering, steering_examples
    from cheers_pl.diagnose.run import headline, markdown
    from cheers_pl.eval.scene_parser import match_scene, parse_scene

    world = SyntheticConfig()
    examples = steering_examples(world)
    assert len(examples) == len(world.colors) * len(world.shapes) == len({p for p, _ in examples})
    for prompt, scene in examples:
        objects = parse_scene(render(scene, world), world)
        match = match_scene(objects, scene)
        assert len(objects) == 1 and match["shape"] == 1.0 and match["color"] == 1.0, (prompt, objects)
    overrides = [f"data.shard_dir={shard_dir}", f"stage.init_from={tokenizer_ckpt}", "stage.sampling.num_steps=2"]
    cfg = compose("tiny_align", overrides)
    # a world of 4 prompts keeps the test quick
    small = dataclasses.replace(world, colors=("red", "blue"), shapes=("circle", "square"), held_out_pairs=())
    steering = run_prompt_steering(build_stage(cfg), small, steps=1, every=1)
    assert steering["prompts"] == ["a red circle", "a red square", "a blue circle", "a blue square"]
    assert len(steering["curve"]) == 1
    for shares in (steering["curve"][0], steering["guidance_1"], steering["one_step"]):
        values = [shares[k] for k in ("one_object", "shape", "color", "both")]
        assert all(0.0 <= v <= 1.0 for v in values) and shares["both"] <= min(shares["shape"], shares["color"])
        assert all(np.isclose(v * 4, round(v * 4)) for v in values), shares
    assert steering["sampling"]["num_steps"] == 2
    report = markdown({"protocol": {}, "steering": steering})
    assert "## 1f" in report and "| guidance 1 | end |" in report
    assert headline({"steering": steering})["steering/color"] == steering["curve"][-1]["color"]


def test_counterfactual_edits_change_only_the_asked_attribute_and_the_part_scores_them(
    tokenizer_ckpt: Path, shard_dir: Path, tmp_path: Path
) -> None:
    """1g's edits: the referred edit changes the named object's asked attribute to the expected answer, the other
    edit gives the same value to another object, the question still names the same object, and the original renders
    as the generated sample; the part reports every share per attribute, and is skipped without an LLM."""
    import dataclasses

    import numpy as np

    from cheers_pl.data.synthetic import make_sample
    from cheers_pl.data.synthetic_render import render
    from cheers_pl.data.synthetic_text import attribute_answer, attribute_question
    from cheers_pl.diagnose.counterfactual import counterfactual_items, run_counterfactual
    from cheers_pl.diagnose.run import headline, markdown

    world = SyntheticConfig()
    items = counterfactual_items(world, per_category=3)
    assert sorted(it["category"] for it in items) == ["color"] * 3 + ["shape"] * 3 + ["texture"] * 3
    first = make_sample(0, "test", world)
    for it in items:
        attribute, scenes = it["category"], it["scenes"]
        original, referred, other = (scenes[e].objects for e in ("original", "referred", "other"))
        changed = [k for k, (a, b) in enumerate(zip(original, referred, strict=True)) if a != b]
        moved = [k for k, (a, b) in enumerate(zip(original, other, strict=True)) if a != b]
        assert len(changed) == 1 and len(moved) == 1 and changed != moved, it
        k, j = changed[0], moved[0]
        assert dataclasses.replace(referred[k], **{attribute: getattr(original[k], attribute)}) == original[k]
        assert attribute_answer(referred[k], attribute) == it["answers"]["referred"] == it["other_value"]
        assert attribute_answer(other[j], attribute) == it["other_value"] != it["answers"]["original"]
        for edit in ("original", "referred", "other"):
            assert attribute_question(scenes[edit].objects[k], scenes[edit], attribute) == it["question"]
    assert np.array_equal(render(Scene.from_json(first["json"]["scene"]), world), first["image"])

    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", f"stage.init_from={tokenizer_ckpt}"])
    out = run_counterfactual(build_stage(cfg), world, per_category=2)
    keys = ("original", "follows_referred", "keeps_under_other", "names_other")
    for attribute in ("color", "shape", "texture"):
        assert out[attribute]["questions"] == 2 and all(out[attribute][k] in (0.0, 0.5, 1.0) for k in keys)
        assert out[attribute]["keeps_under_other"] + out[attribute]["names_other"] <= 1.0
    assert "## 1g" in markdown({"protocol": {}, "counterfactual": out})
    assert headline({"counterfactual": out})["counterfactual/color/names_other"] == out["color"]["names_other"]
    out_dir = tmp_path / "diag"
    assert main(["diagnose", f"ckpt={tokenizer_ckpt}", "parts=[counterfactual]", f"out_dir={out_dir}"]) == 0
    assert "skipped" in json.loads((out_dir / "diagnose.json").read_text())["counterfactual"]


def test_scene_summary_and_token_binding_parts(tokenizer_ckpt: Path, shard_dir: Path) -> None:
    """1h reads only cells no object touches (their pixels are plain background, so the pixel probe cannot beat the
    majority rate); 1i's oracle tokens hold the object under each cell and, with the summary, the scene's attribute
    sets in every token; both parts report through the headline and the Markdown."""
    import numpy as np

    from cheers_pl.data.synthetic import make_sample
    from cheers_pl.data.synthetic_labels import ATTRIBUTES, attribute_classes
    from cheers_pl.diagnose.locality import empty_cells, oracle_tokens, run_scene_summary, run_token_binding
    from cheers_pl.diagnose.run import headline, markdown
    from cheers_pl.restore import load_stage

    world = SyntheticConfig()
    scene = Scene.from_json(make_sample(3, "train", world)["json"]["scene"])
    image = make_sample(3, "train", world)["image"]
    for grid in (4, 8):
        cell = 64 // grid
        plain = [k for k in range(grid * grid)
                 if (image[(k // grid) * cell : (k // grid + 1) * cell, (k % grid) * cell : (k % grid + 1) * cell]
                     == world.background).all()]  # fmt: skip
        assert empty_cells(scene, world, grid).tolist() == plain
    widths = [len(v) for v in attribute_classes(world).values()]
    local, summed = oracle_tokens([scene], world, 8, summary=False), oracle_tokens([scene], world, 8, summary=True)
    assert local.shape == (1, 64, sum(widths)) and torch.equal(summed[..., : sum(widths)], local)
    extra = summed[0, :, sum(widths) :]
    assert (extra == extra[0]).all() and extra[0].sum() == sum(len({getattr(o, a) for o in scene.objects})
                                                              for a in ("color", "shape", "texture"))  # fmt: skip
    assert local[0, empty_cells(scene, world, 8)][:, np.cumsum([0, *widths[:-1]])].all()  # class "none" everywhere
    placed = oracle_tokens([scene], world, 4, summary=False, position=True)[0]
    assert torch.equal(placed[:, : sum(widths)], oracle_tokens([scene], world, 4, summary=False)[0])
    row, col = placed[:, sum(widths) : sum(widths) + 4], placed[:, sum(widths) + 4 :]
    assert row.argmax(1).tolist() == [k // 4 for k in range(16)]
    assert col.argmax(1).tolist() == [k % 4 for k in range(16)]
    assert (row.sum(1) == 1).all() and (col.sum(1) == 1).all()
    assert len(ATTRIBUTES) == len(widths)

    stage = load_stage(str(tokenizer_ckpt), [])
    summary = run_scene_summary(stage.model.vision, world, num_train=200, num_test=80, steps=50)
    for target in ("color", "shape", "texture"):
        pixels = summary["probes"]["pixels"][target]["linear"]
        assert pixels["accuracy"] <= pixels["chance"]
    cfg = compose("tiny_align", [f"data.shard_dir={shard_dir}", f"stage.init_from={tokenizer_ckpt}"])
    fit = build_stage(cfg)
    tokens = run_token_binding(fit, world, steps=2, batch_size=8, num_train=40, num_test=12, evals=1)
    for source in ("oracle", "oracle+summary", "semantic"):
        assert set(tokens[source]["final"]) <= {"color", "shape", "texture", "count"} and tokens[source]["curve"]
    report = {"protocol": {}, "summary": summary, "tokens": tokens}
    text = markdown(report)
    assert "## 1h" in text and "## 1i" in text and "| oracle+summary |" in text
    assert headline(report)["summary/semantic/color"] == summary["probes"]["semantic"]["color"]["linear"]["accuracy"]

    # another learner over the same tokens: its LLM fields and compression apply to it alone, and the report says so
    other = run_token_binding(fit, world, steps=2, batch_size=8, num_train=40, num_test=12, evals=1,
                              sources=("oracle",), llm_overrides={"num_layers": 1}, compression=1)  # fmt: skip
    assert set(other) == {"oracle", "protocol"} and other["protocol"]["llm"]["num_layers"] == 1
    assert other["protocol"]["compression"] == 1 and fit.model.llm.cfg.num_layers == cfg.model.llm.num_layers
    assert "LLM: num_layers 1; compression 1" in markdown({"protocol": {}, "tokens": other})
    with pytest.raises(ValueError, match="unknown fields"):
        run_token_binding(fit, world, steps=1, num_train=4, num_test=2, sources=("oracle",),
                          llm_overrides={"layers": 4})  # fmt: skip
    with pytest.raises(ValueError, match="token sources"):
        run_token_binding(fit, world, steps=1, num_train=4, num_test=2, sources=("pixels",))

    # relation questions on request: the learner is trained and scored on them alone, and the table has their column
    rel = run_token_binding(fit, world, steps=2, batch_size=8, num_train=40, num_test=12, evals=1,
                            sources=("oracle+position",), categories=("relation",))  # fmt: skip
    assert set(rel["oracle+position"]["final"]) == {"relation"} and rel["protocol"]["categories"] == ["relation"]
    assert "| tokens | relation | seconds |" in markdown({"protocol": {}, "tokens": rel})
    assert set(headline({"tokens": rel})) == {"tokens/oracle+position/relation"}
    with pytest.raises(ValueError, match="1i categories"):
        run_token_binding(fit, world, steps=1, num_train=4, num_test=2, sources=("oracle",), categories=("size",))
    # the CLI arguments fail before any checkpoint is read
    from cheers_pl.diagnose.run import DiagnoseArgs

    with pytest.raises(ValueError, match="token_binding_categories"):
        DiagnoseArgs(ckpt="unused.ckpt", token_binding_categories=["size"])
    with pytest.raises(ValueError, match="token_binding_sources"):
        DiagnoseArgs(ckpt="unused.ckpt", token_binding_sources=["pixels"])


def test_1i_learner_trains_at_the_fit_stage_lr_unless_told(
    tokenizer_ckpt: Path, shard_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`diagnose parts=[tokens]` hands the learner the LR of the stage the LLM is fitted in (the align stage's here),
    or `token_binding_lr` where given, and passes the learner's LLM fields through."""
    from cheers_pl.diagnose import run as diagnose_run

    seen = []

    def fake(stage, world, **kwargs):
        seen.append(kwargs)
        final = {"color": 0.5, "shape": 0.5, "texture": 0.5, "count": 0.5}
        protocol = {"steps": kwargs["steps"], "batch_size": 64, "lr": kwargs["lr"], "num_train_scenes": 1,
                    "compression": 2, "llm_overrides": kwargs["llm_overrides"]}  # fmt: skip
        return {"oracle": {"curve": [final], "final": final, "seconds": 0.0}, "protocol": protocol}

    monkeypatch.setattr(diagnose_run, "run_token_binding", fake)
    align_lr = compose("tiny_align").stage.optim.lr
    for extra, lr in (({}, align_lr), ({"token_binding_lr": 5e-4}, 5e-4)):
        args = DiagnoseArgs(ckpt=str(tokenizer_ckpt), out_dir=str(tmp_path), parts=["tokens"],
                            token_binding_llm={"num_layers": 3}, overrides=[f"data.shard_dir={shard_dir}"],
                            **extra)  # fmt: skip
        diagnose_run.run(args)
        assert seen[-1]["lr"] == lr and seen[-1]["llm_overrides"] == {"num_layers": 3}
    assert "LLM: num_layers 3" in (tmp_path / "diagnose.md").read_text()


def test_cli_sets_the_1i_learner_by_dotted_keys() -> None:
    """`token_binding_llm.num_layers=4` is the diagnose command's own argument, not a config override."""
    from cheers_pl.cli import parse_args
    from cheers_pl.diagnose.run import DiagnoseArgs

    args, rest = parse_args(DiagnoseArgs, ["ckpt=x", "token_binding_llm.num_layers=4", "model.llm.dim=64"])
    assert args.token_binding_llm == {"num_layers": 4} and rest == ["model.llm.dim=64"]
