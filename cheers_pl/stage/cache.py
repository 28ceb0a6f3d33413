"""Per-sample results of frozen modules, computed once per sample key and reused (orchestration, R4).

While a module is frozen its output for a given input never changes during a run: the VAE latent x1 of a training
image, and — while the pixel decoder D and the semantic encoder are frozen — the semantic tokens encoder(D(x1)) of
a clean understanding image, or, while only D is frozen, the decoded pixels D(x1) of that image (the encoder then
trains on them). `FrozenCache` keeps them on the CPU keyed by `<sample key>/<task>` (the image
transform depends on the task), so a sample seen again skips the VAE encoder, D and the encoder. The keys of a
stream are stable (`Batch.keys`), so a cache is exactly a memo of a pure function of the key.
"""

from collections.abc import Callable, Sequence

import torch


class FrozenCache:
    """A memo of a frozen computation over batch rows, with hit and miss counts."""

    def __init__(self, enabled: bool, max_items: int) -> None:
        self.enabled = enabled
        self.max_items = max_items
        self.store: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __call__(
        self, keys: Sequence[str], compute: Callable[[list[int]], torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        """The results for `keys` on `device`; `compute(indices)` returns the rows of the missing ones."""
        if not self.enabled:
            return compute(list(range(len(keys))))
        missing = [i for i, key in enumerate(keys) if key not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute(missing) if missing else None
        rows: list[torch.Tensor | None] = [None] * len(keys)
        for j, i in enumerate(missing):
            rows[i] = fresh[j]
            if len(self.store) < self.max_items:
                self.store[keys[i]] = fresh[j].detach().to("cpu")
        for i, key in enumerate(keys):
            if rows[i] is None:
                rows[i] = self.store[key]
        return torch.stack([r.to(device) for r in rows])
