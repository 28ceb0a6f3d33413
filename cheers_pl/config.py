"""Typed experiment configs: `conf/` YAML composed and validated against dataclasses (STYLE.md R6, R7).

An experiment (`conf/experiment/<name>.yaml`) names one option per group in `defaults:` (model, data, stage,
callbacks, trainer) and overrides values below it; `key=value` overrides come last, and `group=option` on the
command line swaps a whole group. The schema of `stage` is picked by its `name` from the stage registry, and each
entry of `callbacks` by its key from the callback registry. Unknown keys, missing required values and wrong types
raise a `ValueError` that names the key and the file it came from.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cheers_pl.callbacks.checkpointing import CheckpointConfig
from cheers_pl.callbacks.nonfinite import NonFiniteConfig
from cheers_pl.checkpoint import config_yaml, saved_config
from cheers_pl.data.datamodule import DataConfig
from cheers_pl.registry import MODEL_SCHEMA, callback_schema, stage_schema

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "data", "stage", "callbacks", "trainer")


@dataclass
class TrainerConfig:
    """Keyword arguments of `lightning.Trainer` (the common ones typed; any other under `extra`)."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "auto", "ddp", "fsdp", ... (see conf/trainer/)
    precision: str = "32-true"
    max_steps: int = 100
    val_check_interval: Any = None  # int steps or float fraction; None = Lightning's default
    check_val_every_n_epoch: Any = None  # None with resampled (infinite) training streams
    limit_val_batches: Any = 2
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = 1.0
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    deterministic: Any = False
    extra: dict[str, Any] = field(default_factory=dict)

    def kwargs(self) -> dict[str, Any]:
        """The kwargs for `lightning.Trainer`."""
        out = {k: v for k, v in vars(self).items() if k != "extra"}
        return {**out, **self.extra}


@dataclass
class ExperimentConfig:
    """One run: what to build, what data, which stage, which callbacks, and how the Trainer runs."""

    name: str = "???"
    seed: int = 0
    output_root: str = "runs"  # the run directory is <output_root>/<name>
    resume_from: str | None = None  # a checkpoint of this same run to resume exactly (optimizer, step, data)
    model: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    stage: Any = None
    callbacks: dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # when last.ckpt is written
    nonfinite: NonFiniteConfig = field(default_factory=NonFiniteConfig)  # skipping NaN/Inf steps

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root) / self.name


def _load_yaml(path: Path) -> DictConfig:
    try:
        node = OmegaConf.load(path)
    except Exception as err:  # yaml raises several parser/scanner error types
        raise ValueError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(node, DictConfig):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return node


def _options(group: str, conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _group_node(group: str, option: str, conf_dir: Path) -> DictConfig:
    path = conf_dir / group / f"{option}.yaml"
    if not path.exists():
        raise ValueError(f"config group {group}={option!r}: no file {path}; options: {_options(group, conf_dir)}")
    return _load_yaml(path)


def _schema_for(node: DictConfig) -> DictConfig:
    """The structured schema for a whole config node, with stage and callbacks picked by name."""
    schema = OmegaConf.structured(ExperimentConfig)
    schema.model = OmegaConf.structured(MODEL_SCHEMA)
    stage = node.get("stage")
    if stage is not None:
        schema.stage = OmegaConf.structured(stage_schema(stage.get("name")))
    for key in node.get("callbacks") or {}:
        schema.callbacks[key] = OmegaConf.structured(callback_schema(key))
    return schema


def _merge(base: DictConfig, node: DictConfig | dict, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, node)
    except OmegaConfBaseException as err:
        raise ValueError(f"{source}: {_describe(err)}") from err


def _describe(err: OmegaConfBaseException) -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"bad key {key!r}: {msg}" if key else msg


def _declared_missing(node: Any, prefix: str = "") -> list[str]:
    """Keys set to `???` in a plain (unresolved) config node; interpolations are not resolved here."""
    out: list[str] = []
    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return out
    for key, child in items:
        if isinstance(child, (DictConfig, ListConfig)):
            out += _declared_missing(child, f"{prefix}{key}.")
        elif child is not None and not child._is_interpolation() and child._is_missing():
            out.append(f"{prefix}{key}")
    return out


def from_node(node: DictConfig, source: str = "config") -> ExperimentConfig:
    """Validates a composed config node against the dataclasses (unknown keys, types, missing values).

    A layer that sets a value to `???` declares it required: it must be given by a later layer or override.
    """
    missing = sorted(_declared_missing(node))
    if missing:
        raise ValueError(f"{source}: missing required values {missing}; set them with key=value")
    merged = _merge(_schema_for(node), node, source)
    try:
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise ValueError(f"{source}: {_describe(err)}") from err
    assert isinstance(cfg, ExperimentConfig)
    return cfg


def _experiment_layers(experiment: str, conf_dir: Path, chain: tuple[str, ...] = ()) -> tuple[dict, list]:
    """The group defaults and the (path, body) layers of an experiment, following `base:` (parents first)."""
    exp_path = conf_dir / "experiment" / f"{experiment}.yaml"
    if not exp_path.exists():
        raise ValueError(f"experiment={experiment!r}: no file {exp_path}; options: {_options('experiment', conf_dir)}")
    if experiment in chain:
        raise ValueError(f"{exp_path}: `base:` cycle {' -> '.join((*chain, experiment))}")
    body = _load_yaml(exp_path)
    base = body.pop("base", None)
    defaults, layers = _experiment_layers(base, conf_dir, (*chain, experiment)) if base else ({}, [])
    own_defaults = dict(body.pop("defaults", None) or {})
    unknown = set(own_defaults) - set(GROUPS)
    if unknown:
        raise ValueError(f"{exp_path}: defaults has unknown groups {sorted(unknown)}; groups: {GROUPS}")
    return {**defaults, **own_defaults}, [*layers, (exp_path, body)]


def compose(experiment: str, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> ExperimentConfig:
    """Composes `conf/experiment/<experiment>.yaml` with its group defaults and `key=value` overrides.

    An experiment may name another as `base:`; it then starts from that experiment's groups and values (ablations
    are one-value changes of a base this way).

    Raises:
        ValueError: naming the offending key, file or option.
    """
    defaults, layers = _experiment_layers(experiment, conf_dir)
    dotlist = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not of the form key=value")
        if key in GROUPS:
            defaults[key] = value
        else:
            dotlist.append(item)
    node = OmegaConf.create({"name": experiment})
    for group, option in defaults.items():
        node = OmegaConf.merge(node, {group: _group_node(group, option, conf_dir)})
    for _, body in layers:
        node = OmegaConf.merge(node, body)
    try:
        node = OmegaConf.merge(node, OmegaConf.from_dotlist(dotlist))
    except OmegaConfBaseException as err:
        raise ValueError(f"command-line overrides: {_describe(err)}") from err
    # validate each layer against the schema so errors name the file the bad key came from
    schema = _schema_for(node)
    for group, option in defaults.items():
        _merge(schema, {group: _group_node(group, option, conf_dir)}, str(conf_dir / group / f"{option}.yaml"))
    for path, body in layers:
        _merge(schema, body, str(path))
    _merge(schema, OmegaConf.from_dotlist(dotlist), "command-line overrides")
    return from_node(node, str(layers[-1][0]))


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (saved with every run and checkpoint, R13)."""
    return config_yaml(cfg)


def save_config(cfg: ExperimentConfig, directory: str | Path) -> Path:
    """Writes `<directory>/config.yaml` and returns its path."""
    path = Path(directory) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Reloads and re-validates a saved `config.yaml` (plus `key=value` overrides)."""
    node = OmegaConf.merge(_load_yaml(Path(path)), OmegaConf.from_dotlist(list(overrides)))
    return from_node(node, str(path))


def config_of_checkpoint(ckpt: dict, overrides: Sequence[str] = (), path: str | Path = "ckpt") -> ExperimentConfig:
    """The experiment config stored in a checkpoint (keys of earlier releases renamed) + `key=value` overrides,
    validated again."""
    node = OmegaConf.merge(OmegaConf.create(saved_config(ckpt, path)), OmegaConf.from_dotlist(list(overrides)))
    return from_node(node, f"{path}: saved config")
