"""`python -m cheers_pl train` killed with SIGKILL at a step it does not choose resumes exactly from last.ckpt.

Each run is the real command in its own process; a `sitecustomize` on its PYTHONPATH only adds a callback that
appends every step's loss and sample keys to a trace file (the command itself is unchanged). Two DataLoader workers,
so the resumed loader must also continue the workers' round-robin where the killed one was.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 12, 3
TRACE = textwrap.dedent("""
    import json, os
    path = os.environ.get("CHEERS_TEST_TRACE")
    if path:
        import lightning as L
        from cheers_pl import train

        class Trace(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                row = {"step": trainer.global_step - 1, "loss": float(outputs["loss"]), "keys": list(batch.keys)}
                with open(path, "a") as f:
                    f.write(json.dumps(row) + "\\n")

        build = train.build_trainer
        train.build_trainer = lambda cfg, extra=None: build(cfg, [*(extra or []), Trace()])
""")


def _start(tmp_path: Path, shard_dir: Path, name: str, trace: Path, *extra: str) -> subprocess.Popen:
    args = [
        "train", "experiment=tiny_generation", "callbacks=none", "stage.init_from=null", f"data.shard_dir={shard_dir}",
        "data.batch_size=4", "data.num_workers=2", "data.shuffle_buffer=20", "data.task_weights.text=0",
        "stage.understanding_zero_target=true", f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0",
        "trainer.val_check_interval=1000", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "stage.optim.warmup_frac=0.2", f"checkpoint.every_n_steps={EVERY}", f"output_root={tmp_path / 'runs'}",
        f"name={name}", *extra,
    ]  # fmt: skip
    # one thread each: two training processes side by side with a pool of 2 threads on 2 cores slow each other down
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "CHEERS_TEST_TRACE": str(trace),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "cheers_pl", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _rows(trace: Path) -> dict[int, dict]:
    if not trace.exists():
        return {}
    return {r["step"]: r for r in map(json.loads, trace.read_text().splitlines())}


def _finish(proc: subprocess.Popen, timeout: float = 240) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out[out.index("{") :])


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:  # a failed assertion must not leave training processes behind
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.slow
def test_sigkill_at_an_unchosen_step_then_resume_equals_the_uninterrupted_run(shard_dir, tmp_path, procs) -> None:
    (tmp_path / "sitecustomize.py").write_text(TRACE)
    full = _start(tmp_path, shard_dir, "full", tmp_path / "full.jsonl")
    victim = _start(tmp_path, shard_dir, "cut", tmp_path / "cut.jsonl")
    procs += [full, victim]
    deadline = time.monotonic() + 240
    while max(_rows(tmp_path / "cut.jsonl"), default=-1) < 2 * EVERY and time.monotonic() < deadline:
        assert victim.poll() is None, victim.communicate()[1][-3000:]
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # wherever it is now: mid-step, mid-fetch, mid-write
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    last = tmp_path / "runs" / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True, mmap=True)["global_step"]
    killed = _rows(tmp_path / "cut.jsonl")
    assert saved % EVERY == 0 and EVERY <= saved <= max(killed) + 1 < STEPS, (saved, max(killed))

    reference = _rows(tmp_path / "full.jsonl")
    assert _finish(full)["global_step"] == STEPS and sorted(reference) == list(range(STEPS))
    assert all(killed[s] == reference[s] for s in killed)  # the same run up to the kill

    resumed = _start(tmp_path, shard_dir, "cut", tmp_path / "resumed.jsonl", f"resume_from={last}")
    procs.append(resumed)
    assert _finish(resumed)["global_step"] == STEPS
    rows = _rows(tmp_path / "resumed.jsonl")
    assert sorted(rows) == list(range(saved, STEPS))
    for step in rows:
        assert rows[step]["keys"] == reference[step]["keys"], f"data position differs at step {step}"
        assert rows[step]["loss"] == reference[step]["loss"], f"loss differs at step {step}"
    assert len({r["loss"] for r in reference.values()}) == STEPS  # distinct losses: the equality is not trivial
    assert os.listdir(last.parent) == ["last.ckpt"]
