"""Lightning callbacks that own metrics, sample grids and EMA (STYLE.md R10), picked by name from `CALLBACKS`."""

from typing import Any

import lightning as L

from cheers_pl.callbacks.reconstruction import ReconstructionCallback, ReconstructionConfig
from cheers_pl.callbacks.retrieval import RetrievalCallback, RetrievalConfig

# name -> (config dataclass, callback class); a config's `callbacks.<name>` section is validated against the first.
CALLBACKS: dict[str, tuple[type, type]] = {
    "reconstruction": (ReconstructionConfig, ReconstructionCallback),
    "retrieval": (RetrievalConfig, RetrievalCallback),
}
CALLBACK_CONFIGS: dict[str, type] = {name: entry[0] for name, entry in CALLBACKS.items()}


def build_callbacks(sections: dict[str, Any]) -> list[L.Callback]:
    """Instantiates the configured callbacks (`None` disables a section)."""
    out = []
    for name, cfg in sections.items():
        if cfg is None:
            continue
        if name not in CALLBACKS:
            raise ValueError(f"callbacks.{name}: not a registered callback; registered: {sorted(CALLBACKS)}")
        out.append(CALLBACKS[name][1](cfg))
    return out
