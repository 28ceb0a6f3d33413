"""Arguments of the `bench` command (kept free of heavy imports: the CLI imports it at start-up)."""

from dataclasses import dataclass, field

SECTIONS = ("compression", "sampling", "data", "throughput", "scaling")


@dataclass
class BenchArgs:
    """Arguments of the `bench` command."""

    out_dir: str = "runs/bench"
    repeats: int = 5  # timed repeats per figure (medians); >= 5 for reported numbers
    warmup: int = 1  # untimed calls before timing
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    quick: bool = False  # tiny preset, fewer cases: < 1 minute on 2 cores
    preset: str = "small"  # model of sections compression, sampling and (with tiny) throughput; quick: tiny
    device: str = "cpu"  # "cpu" | "cuda" (memory then from torch.cuda.max_memory_allocated)
    # torch intra-op threads; 0 = auto: torch's default, but 1 when the 1-min load average is already >= 1 (OpenMP
    # threads spin-waiting on cores shared with other processes made timings 10-100x slower and erratic)
    threads: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"bench sections={unknown} unknown; choose from {list(SECTIONS)}")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"bench repeats={self.repeats} must be >= 1 and warmup={self.warmup} >= 0")
        if self.threads < 0:
            raise ValueError(f"bench threads={self.threads} must be >= 0 (0 = auto)")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"bench device={self.device!r} must be 'cpu' or 'cuda'")
