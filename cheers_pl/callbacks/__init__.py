"""Lightning callbacks that own metrics, sample grids and EMA (STYLE.md R10), picked by name from `CALLBACKS`."""

from typing import Any

import lightning as L

from cheers_pl.callbacks.clip_score import CLIPScoreCallback, CLIPScoreConfig
from cheers_pl.callbacks.compositional import CompositionalCallback, CompositionalConfig
from cheers_pl.callbacks.ema import EMACallback, EMAConfig
from cheers_pl.callbacks.fid import FIDCallback, FIDConfig
from cheers_pl.callbacks.image_samples import ImageSamplesCallback, ImageSamplesConfig
from cheers_pl.callbacks.reconstruction import ReconstructionCallback, ReconstructionConfig
from cheers_pl.callbacks.retrieval import RetrievalCallback, RetrievalConfig
from cheers_pl.callbacks.vqa import VQACallback, VQAConfig

# name -> (config dataclass, callback class); a config's `callbacks.<name>` section is validated against the first.
CALLBACKS: dict[str, tuple[type, type]] = {
    "reconstruction": (ReconstructionConfig, ReconstructionCallback),
    "retrieval": (RetrievalConfig, RetrievalCallback),
    "ema": (EMAConfig, EMACallback),
    "fid": (FIDConfig, FIDCallback),
    "clip_score": (CLIPScoreConfig, CLIPScoreCallback),
    "image_samples": (ImageSamplesConfig, ImageSamplesCallback),
    "compositional": (CompositionalConfig, CompositionalCallback),
    "vqa": (VQAConfig, VQACallback),
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
