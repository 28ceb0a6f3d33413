"""Stage checkpoints as files: safe reading with one clear error, atomic writing, the saved config, renamed keys.

A stage checkpoint is Lightning's dict with the resolved experiment config as YAML under `CONFIG_KEY` (R13).

Reading (`read_checkpoint`) never runs pickled code: files load with `torch.load(weights_only=True)`, which our own
checkpoints satisfy. A file that needs unsafe unpickling (arbitrary classes or functions) is refused, unless the
caller passes `trusted=True` or its path is listed in the environment variable `CHEERS_PL_TRUSTED_CHECKPOINTS`
(paths separated by `os.pathsep`) — an explicit opt-in per file for checkpoints from a source you trust. A missing,
truncated or foreign file gives one `ValueError` naming the file and the key that named it.

Writing (`AtomicCheckpointIO`, the Trainer's checkpoint IO): the file is written next to its target as a hidden
`.<name>.partial-<pid>`, fsynced and renamed over the target, so a kill or a full disk during the write leaves the
previous checkpoint whole. Lightning's own `_atomic_save` stages the bytes in memory and then in the system temporary
directory, and a move from there onto another file system is a copy that a kill interrupts half-written.

Checkpoints written before a rename still load: `upgrade_state_dict` and `upgrade_config` rename the parameter
names (`model.tokenizer.*` → `model.vision.*`, `cheers_pl.model.weights.RENAMED_KEYS`) and the config keys
(`RENAMED_CONFIG_KEYS`, with the `trainable` globs that name them). Rebuilding a stage from a checkpoint needs the
schema registry and lives with the commands (`cheers_pl.restore`).
"""

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import OmegaConf

from cheers_pl.model.weights import upgrade_parameter_name

log = logging.getLogger(__name__)

CONFIG_KEY = "cheers_config"
TRUSTED_ENV = "CHEERS_PL_TRUSTED_CHECKPOINTS"
# dotted config key of an earlier release -> its name now
RENAMED_CONFIG_KEYS = {"model.tokenizer": "model.vision", "data.tokenizer_vocab_size": "data.text_tokenizer_vocab_size"}


def is_trusted(path: str | Path) -> bool:
    """Whether `path` is listed in `CHEERS_PL_TRUSTED_CHECKPOINTS` (the opt-in to unsafe unpickling)."""
    listed = [p for p in os.environ.get(TRUSTED_ENV, "").split(os.pathsep) if p]
    target = Path(path).resolve()
    return any(Path(p).resolve() == target for p in listed)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # the scan itself failed: the caller reports the load error instead
        return []


def read_checkpoint(path: str | Path, what: str = "ckpt", *, trusted: bool = False, mmap: bool = False) -> dict:
    """The checkpoint dict of `path` (on CPU), loaded without running pickled code.

    Args:
        path: The file.
        what: The config key or argument that named it, for the error message.
        trusted: Allow unsafe unpickling for this file (also granted by listing it in `CHEERS_PL_TRUSTED_CHECKPOINTS`).
        mmap: Map tensor storages instead of reading them (a cheap validity check of a large file).

    Raises:
        ValueError: naming `what` and the file when it is missing, truncated, foreign, needs unsafe unpickling
            without the opt-in, or holds something other than a dict.
    """
    path = Path(path)
    where = f"{what}={str(path)!r}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{where}: not a PyTorch checkpoint (no zip archive: truncated, or a foreign or text file)")
    unsafe_ok = trusted or is_trusted(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not unsafe_ok, mmap=mmap)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path)
        if not names:
            raise ValueError(f"{where}: cannot read checkpoint ({str(err).strip().splitlines()[-1]})") from err
        raise ValueError(
            f"{where}: refused, loading it would run pickled code ({', '.join(names[:5])}); if you trust this file, "
            f"list it in the environment variable {TRUSTED_ENV} (see README, Checkpoints)"
        ) from err
    except Exception as err:  # a damaged archive raises RuntimeError, EOFError, KeyError, ... from torch's reader
        raise ValueError(f"{where}: cannot read checkpoint ({str(err).strip().splitlines()[0]})") from err
    if not isinstance(ckpt, dict):
        raise ValueError(f"{where}: holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def check_stage_checkpoint(ckpt: dict, path: str | Path, what: str = "ckpt") -> None:
    """Raises a `ValueError` naming the file unless `ckpt` is a training checkpoint of a cheers_pl stage."""
    missing = [k for k in ("state_dict", CONFIG_KEY, "loops", "global_step") if k not in ckpt]
    if missing:
        raise ValueError(f"{what}={str(path)!r}: not a cheers_pl training checkpoint (no {missing})")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its target, fsyncs and renames it over the target (POSIX rename is atomic).

    A write that fails with an `OSError` (disk full, quota, permissions) removes its partial file, logs an error
    naming the target and the intact previous checkpoint, and is counted in `failed_writes`; it does not raise, so
    that the other ranks are not left waiting in the barrier that follows a save (the caller decides, e.g. `train`
    raises when the final save failed). `last_written` is the `(path, global_step)` of the last complete write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed_writes = 0
        self.last_error: str | None = None
        self.last_written: tuple[str, int] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote storage: fsspec's transaction is what that backend offers
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO.save_checkpoint takes no storage_options")
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_partial(checkpoint, partial)
            os.replace(partial, target)
            _fsync_dir(target.parent)
        except OSError as err:
            partial.unlink(missing_ok=True)
            self.failed_writes += 1
            previous = "the previous checkpoint there is unchanged" if target.exists() else "no earlier one exists"
            self.last_error = f"checkpoint {str(target)!r} not written ({err.strerror or err}); {previous}"
            log.error("%s", self.last_error)
            return
        for stale in target.parent.glob(f".{target.name}.partial-*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)
        self.last_error = None
        self.last_written = (str(target), int(checkpoint.get("global_step", -1)))


def write_partial(checkpoint: dict[str, Any], partial: Path) -> None:
    """`torch.save` into `partial`, flushed and fsynced (the step that a kill or a full disk interrupts)."""
    with open(partial, "wb") as f:
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def config_yaml(cfg: Any) -> str:
    """A resolved config dataclass as YAML (saved with every run and checkpoint, R13)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def upgrade_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A stage state dict with the parameter names of earlier releases renamed."""
    return {upgrade_parameter_name(k, prefix="model."): v for k, v in state.items()}


def _rename_glob(pattern: str) -> str:
    for old, new in RENAMED_CONFIG_KEYS.items():
        if pattern.startswith(f"{old}."):
            return new + pattern[len(old) :]
    return pattern


def upgrade_config(data: dict[str, Any]) -> dict[str, Any]:
    """A plain experiment-config dict with the keys of earlier releases renamed (in place and returned)."""
    for old, new in RENAMED_CONFIG_KEYS.items():
        *parents, key = old.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key in node:
            node[new.rsplit(".", 1)[-1]] = node.pop(key)
    stage = data.get("stage")
    if isinstance(stage, dict) and isinstance(stage.get("trainable"), list):
        stage["trainable"] = [_rename_glob(p) for p in stage["trainable"]]
    return data


def saved_config(ckpt: dict, path: str | Path = "ckpt") -> dict[str, Any]:
    """The experiment config stored in a checkpoint as a plain dict, renamed keys upgraded.

    Raises:
        ValueError: when the checkpoint has no saved config (not written by a stage of this package).
    """
    if not isinstance(ckpt, dict) or CONFIG_KEY not in ckpt:
        raise ValueError(f"ckpt={str(path)!r}: no saved config ({CONFIG_KEY!r}); not a cheers_pl checkpoint")
    return upgrade_config(OmegaConf.to_container(OmegaConf.create(ckpt[CONFIG_KEY])))
