"""2-process DDP on CPU (gloo) of the tiny generation stage through `train.run` and conf/trainer/ddp.yaml."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STEPS = 3
DRIVER = textwrap.dedent("""
    import json, sys
    import lightning as L
    from cheers_pl import train
    from cheers_pl.process import exit_process
    from cheers_pl.config import compose

    shard_dir, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Recorder(L.Callback):
        def __init__(self):
            self.keys, self.loss, self.logged = [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.keys.append(list(batch.keys))
            self.loss.append(float(outputs["loss"]))
            self.logged.append(float(trainer.callback_metrics["train/loss"]))

        def on_train_end(self, trainer, pl_module):
            params = {n: float(p.detach().double().abs().sum()) for n, p in pl_module.named_parameters()}
            trainable = sorted(n for n, p in pl_module.named_parameters() if p.requires_grad)
            record = dict(rank=trainer.global_rank, world=trainer.world_size, keys=self.keys, loss=self.loss,
                          logged=self.logged, params=params, trainable=trainable, step=trainer.global_step)
            with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
                json.dump(record, f)

    cfg = compose("tiny_generation", [
        "callbacks=none", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
        f"output_root={out}", f"data.shard_dir={shard_dir}", "stage.init_from=null", "data.batch_size=4",
        "data.num_workers=0", "data.shuffle_buffer=20", f"trainer.max_steps={steps}", "trainer.val_check_interval=1000",
        "trainer.limit_val_batches=0", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    ])
    build = train.build_trainer
    train.build_trainer = lambda c: build(c, [Recorder()])
    train.run(cfg)
    exit_process(0)  # as `python -m cheers_pl` ends: no interpreter teardown of the gloo group
""")


@pytest.fixture(scope="module")
def ranks(shard_dir, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    script = out / "driver.py"
    script.write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(script), str(shard_dir), str(out), str(STEPS)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
def test_both_ranks_train_on_disjoint_data_and_stay_in_sync(ranks: list[dict]) -> None:
    r0, r1 = ranks
    assert (r0["world"], r1["world"]) == (2, 2) and r0["step"] == r1["step"] == STEPS
    assert len(r0["loss"]) == len(r1["loss"]) == STEPS
    keys0 = {k for batch in r0["keys"] for k in batch}
    keys1 = {k for batch in r1["keys"] for k in batch}
    assert keys0 and keys1 and not keys0 & keys1  # each rank reads its own shards
    assert r0["loss"] != r1["loss"]  # different data → different local losses
    # gradients were all-reduced: identical weights on both ranks after the steps
    assert r0["params"] == r1["params"]
    assert r0["trainable"] == r1["trainable"] and r0["trainable"]


@pytest.mark.slow
def test_logged_loss_is_the_mean_over_ranks(ranks: list[dict]) -> None:
    r0, r1 = ranks
    assert r0["logged"] == pytest.approx(r1["logged"])
    assert r0["logged"] == pytest.approx([(a + b) / 2 for a, b in zip(r0["loss"], r1["loss"], strict=True)])


EXIT_DRIVER = textwrap.dedent("""
    import sys, torch
    from cheers_pl.process import exit_process
    if sys.argv[1] == "group":
        store = torch.distributed.FileStore(sys.argv[2], 1)
        torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    print("written before the exit", end="")  # no newline: only a flush brings it out
    exit_process(int(sys.argv[3]))
    print("not reached")
""")


@pytest.mark.parametrize("group", ["group", "none"])
def test_exit_process_ends_with_the_code_and_flushes(group: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_DRIVER, group, str(tmp_path / "store"), "3"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "written before the exit"
