"""The command registry behind `python -m cheers_pl <command> experiment=<name> [key=value ...]` (R12).

A command is a function `run(cfg, args) -> dict` plus an optional dataclass of its own arguments (`ckpt=...`,
`prompt=...`); any other `key=value` is a config override. Commands register by name in `COMMANDS`; each issue that
lands adds its own.
"""

import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cheers_pl.ablate import AblateArgs
from cheers_pl.bench.args import BenchArgs
from cheers_pl.callbacks.nonfinite import NonFiniteError
from cheers_pl.config import ExperimentConfig, compose
from cheers_pl.convert import ConvertArgs
from cheers_pl.data_stats import DataStatsArgs
from cheers_pl.diagnose.run import DiagnoseArgs
from cheers_pl.evaluate import EvaluateArgs
from cheers_pl.export_tokenizer import ExportTokenizerArgs
from cheers_pl.inspect import InspectArgs
from cheers_pl.official_samples import DPGArgs, GenEvalArgs
from cheers_pl.sample import AnswerArgs, EditArgs, SampleArgs


@dataclass
class Command:
    """A CLI command: `run(cfg, args)`; `args` is an instance of `args_cls` (or None when it takes none)."""

    run: Callable[[ExperimentConfig | None, Any], dict]
    help: str
    args_cls: type | None = None
    needs_experiment: bool = True


def _make_shards(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.data.shards import write_all

    assert cfg is not None
    manifest = write_all(cfg.data, workers=max(1, cfg.data.num_workers))
    return {"shard_dir": cfg.data.shard_dir, **{s: v["num_samples"] for s, v in manifest["splits"].items()}}


def _train(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.train import run

    assert cfg is not None
    return run(cfg)


def _answer(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.sample import answer

    return answer(args)


def _sample(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.sample import sample

    return sample(args)


def _inspect(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.inspect import run

    return run(cfg, args)


def _ablate(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.ablate import run

    return run(args)


def _data_stats(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.data_stats import run

    assert cfg is not None
    return run(cfg, args)


def _evaluate(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.evaluate import run

    return run(args)


def _export_tokenizer(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.export_tokenizer import export_tokenizer

    card = export_tokenizer(args.ckpt, args.out_dir, args.num_scenes)
    return {"out_dir": args.out_dir, **card["figures"]}


def _diagnose(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.diagnose.run import run

    return run(args)


def _bench(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.bench.run import run

    return run(args)


def _edit(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.sample import edit

    return edit(args)


def _convert_official(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.convert import run

    return run(args)


def _geneval_samples(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.official_samples import geneval_samples

    return geneval_samples(args)


def _dpg_samples(cfg: ExperimentConfig | None, args: Any) -> dict:
    from cheers_pl.official_samples import dpg_samples

    return dpg_samples(args)


COMMANDS: dict[str, Command] = {
    "make-shards": Command(_make_shards, "write the synthetic world as train/val/test WebDataset shards + manifest"),
    "data-stats": Command(_data_stats, "task/skip counts and samples/s over num_samples=2000", DataStatsArgs),
    "train": Command(_train, "train the stage of an experiment (tiny preset on CPU in minutes)"),
    "inspect": Command(_inspect, "parameters per component and tokens per image (meta device)", InspectArgs),
    "answer": Command(_answer, "answer a question about an image: ckpt=... image=... question=...", AnswerArgs, False),
    "sample": Command(_sample, "generate PNGs: ckpt=... prompt=... num_images=4 [out_dir=samples]", SampleArgs, False),
    "evaluate": Command(_evaluate, "GenEval, VQA, reconstruction (+FID/CLIP) report: ckpt=...", EvaluateArgs, False),
    "ablate": Command(_ablate, "paper ablations at an equal budget -> table + plot", AblateArgs, False),
    "export-tokenizer": Command(
        _export_tokenizer,
        "tokenizer checkpoint → small dir for init_from: ckpt=... out_dir=...",
        ExportTokenizerArgs,
        False,
    ),
    "diagnose": Command(
        _diagnose, "what limits a checkpoint: probes, overfit checks, time profile: ckpt=...", DiagnoseArgs, False
    ),
    "bench": Command(_bench, "speed/memory benchmarks -> bench.json + bench.md [quick=true]", BenchArgs, False),
    "edit": Command(_edit, "zero-shot edit: ckpt=... image=... instruction=... [t0=0.1]", EditArgs, False),
    "convert-official": Command(
        _convert_official,
        "released ai9stars/Cheers -> pipeline dir: src=... dst=... [check_only=true]",
        ConvertArgs,
        False,
    ),
    "geneval-samples": Command(
        _geneval_samples, "GenEval folders: ckpt=... [metadata=<jsonl>] [out_dir=...]", GenEvalArgs, False
    ),
    "dpg-samples": Command(
        _dpg_samples, "DPG-Bench 2x2 grids: ckpt=... [prompts=<jsonl>] [out_dir=...]", DPGArgs, False
    ),
}


def parse_args(args_cls: type | None, items: list[str]) -> tuple[Any, list[str]]:
    """Splits `key=value` items into the command's own arguments (validated) and config overrides."""
    if args_cls is None:
        return None, items
    own_keys = {f.name for f in dataclasses.fields(args_cls)}
    own = [i for i in items if i.partition("=")[0].split(".")[0] in own_keys]  # `field.key=v` sets a dict field
    rest = [i for i in items if i.partition("=")[0].split(".")[0] not in own_keys]
    try:
        node = OmegaConf.merge(OmegaConf.structured(args_cls), OmegaConf.from_dotlist(own))
        return OmegaConf.to_object(node), rest
    except OmegaConfBaseException as err:
        raise ValueError(f"command argument {getattr(err, 'full_key', '')!r}: {str(err).splitlines()[0]}") from err


def usage() -> str:
    lines = ["usage: python -m cheers_pl <command> experiment=<name> [key=value ...]", "", "commands:"]
    lines += [f"  {name:<17} {cmd.help}" for name, cmd in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, items = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    try:
        experiment = [i.partition("=")[2] for i in items if i.startswith("experiment=")]
        items = [i for i in items if not i.startswith("experiment=")]
        args, overrides = parse_args(command.args_cls, items)
        cfg = None
        if experiment:
            cfg = compose(experiment[-1], overrides)
        elif command.needs_experiment:
            raise ValueError(f"command {name!r} needs experiment=<name>")
        elif overrides and not hasattr(args, "overrides"):
            raise ValueError(f"unknown arguments {overrides} for command {name!r} without experiment=<name>")
        elif overrides:  # commands that load a saved config take overrides to it
            args = dataclasses.replace(args, overrides=overrides)
        result = command.run(cfg, args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:  # training stopped on repeated non-finite steps: the message says where and why
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2, default=str))
    return 0
