"""EMA sharded like the weights (cheers_pl/callbacks/ema.py): equal to Lightning's and to an unsharded EMA (R11).

The FSDP test runs the 1.5B recipes' strategy (`cheers_fsdp_ac`) on 2 CPU ranks (gloo) through `train.run`: a
reference run whose callback gathers the full weights after every step and averages them unsharded, a run cut at
step 2 and its resumption. It also injects a NaN into one rank's gradient shard (both ranks must skip that step)
and validates on shards split 40 / 24 over the ranks (uneven: without `EvenBatches` rank 0 would wait forever).
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

from cheers_pl.callbacks.ema import EMACallback, EMAConfig, trainable
from cheers_pl.checkpoint import read_checkpoint
from cheers_pl.export import pipeline_from_checkpoint
from tests.callbacks._tiny_run import StopAt, tiny_run


def test_update_schedule_and_validation() -> None:
    ema = EMACallback(EMAConfig(update_every_n_steps=2, update_starting_at_step=3))
    assert [s for s in range(8) if ema.should_update(s)] == [4, 6]
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        EMAConfig(decay=1.0)
    with pytest.raises(ValueError, match="callbacks.ema.update_every_n_steps"):
        EMAConfig(update_every_n_steps=0)


class Final(L.Callback):
    """The EMA callbacks' averages of the trainable parameters when training ends (before Lightning's copies back)."""

    def __init__(self, lightning_ema: EMAWeightAveraging) -> None:
        self.lightning_ema, self.ours, self.theirs, self.weights = lightning_ema, [], [], []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        ours = next(c for c in trainer.callbacks if isinstance(c, EMACallback))
        self.ours = [e.clone() for e in ours.ema]
        averaged = dict(self.lightning_ema._average_model.module.named_parameters())  # its copies are frozen
        self.theirs = [averaged[n].detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad]
        self.weights = [p.detach().clone() for p in trainable(pl_module)]


@pytest.mark.slow
def test_equal_to_lightnings_ema_and_in_state_dict_resume_and_export(monkeypatch, shard_dir, tmp_path) -> None:
    """One device: our EMA equals `EMAWeightAveraging` bit for bit; the checkpoint's state_dict is the EMA and
    current_model_state the weights; a run cut at step 2 and resumed ends with the same EMA; export carries it."""
    theirs = EMAWeightAveraging(decay=0.8)
    final = Final(theirs)
    ema = ["callbacks.ema.decay=0.8", "trainer.max_steps=4"]
    tiny_run(monkeypatch, shard_dir, tmp_path, "both", ema, [theirs, final])  # its checkpoint holds both EMAs
    assert len(final.ours) == len(final.theirs) > 10
    assert all(torch.equal(a, b) for a, b in zip(final.ours, final.theirs, strict=True))
    assert not all(torch.equal(a, w) for a, w in zip(final.ours, final.weights, strict=True))
    full = tiny_run(monkeypatch, shard_dir, tmp_path, "full", ema, [])
    ckpt = read_checkpoint(full["checkpoint"])
    names = [n for n, v in ckpt["state_dict"].items() if not torch.equal(v, ckpt["current_model_state"][n])]
    trained = ("model.vision.encoder.", "model.vision.compressor.", "model.llm.", "model.flow_head.")  # the globs
    assert len(names) >= len(final.ours) and all(n.startswith(trained) for n in names)  # (+ tied LM head alias)

    tiny_run(monkeypatch, shard_dir, tmp_path, "cut", ema, [StopAt(2)])
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    tiny_run(monkeypatch, shard_dir, tmp_path, "cut", [*ema, f"resume_from={last}"], [])
    resumed = read_checkpoint(last)
    for key in ("state_dict", "current_model_state"):
        for name, value in ckpt[key].items():
            assert torch.equal(resumed[key][name], value), f"{key} {name}"

    exported = pipeline_from_checkpoint(full["checkpoint"]).model.state_dict()
    for name in names:
        assert torch.equal(exported[name.removeprefix("model.")], ckpt["state_dict"][name])


DRIVER = textwrap.dedent("""
    import json, sys
    import lightning as L
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from cheers_pl import train
    from cheers_pl.process import exit_process
    from cheers_pl.callbacks.ema import EMACallback, trainable
    from cheers_pl.callbacks.nonfinite import NonFiniteGuard
    from cheers_pl.config import compose

    shard_dir, out = sys.argv[1], sys.argv[2]
    DECAY = 0.9

    def clean(name):
        return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")

    class Reference(L.Callback):
        # after every step: the full weights (gathered) and their unsharded EMA, same schedule as EMACallback
        def __init__(self):
            self.ema, self.weights = None, {}

        def on_after_backward(self, trainer, pl_module):
            if trainer.global_rank == 1 and trainer.global_step == 1:  # one rank's shard of one gradient
                next(p for p in pl_module.parameters() if p.grad is not None and p.grad.numel()).grad[0] = float("nan")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with FSDP.summon_full_params(trainer.strategy.model, writeback=False):
                full = {clean(n): p.detach().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
            self.weights[trainer.global_step - 1] = full
            guard = next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
            if guard.last_step_skipped:
                return
            if self.ema is None:
                self.ema = {k: v.float().clone() for k, v in full.items()}
            else:
                self.ema = {k: DECAY * self.ema[k] + (1 - DECAY) * full[k].float() for k in full}

        def on_train_end(self, trainer, pl_module):
            ema = next(c for c in trainer.callbacks if isinstance(c, EMACallback))
            loader = trainer.val_dataloaders
            record = dict(
                ema_bytes=ema.ema_bytes, local=sum(p.numel() for p in trainable(pl_module)),
                total=sum(v.numel() for v in next(iter(self.weights.values())).values()),
                skipped=next(c for c in trainer.callbacks if isinstance(c, NonFiniteGuard)).skipped_total,
                left_out=getattr(loader, "left_out", None), step=trainer.global_step, world=trainer.world_size,
            )
            with open(f"{out}/{trainer.logger.save_dir.split('/')[-1]}-rank{trainer.global_rank}.json", "w") as f:
                json.dump(record, f)
            if trainer.global_rank == 0:
                name = trainer.logger.save_dir.split("/")[-1]
                torch.save({"ema": self.ema, "weights": self.weights}, f"{out}/{name}-ref.pt")

    class StopAt(L.Callback):  # after step 2, with the schedule of the 3-step run
        def on_train_batch_end(self, trainer, *args):
            trainer.should_stop = trainer.should_stop or trainer.global_step >= 2

    def run(name, callbacks, *extra):
        cfg = compose("tiny_generation", [
            "model.contrastive=null", "callbacks=none", f"callbacks.ema.decay={DECAY}", "trainer=fsdp",
            "trainer.strategy=cheers_fsdp_ac", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.precision=32-true", f"output_root={out}", f"name={name}", f"data.shard_dir={shard_dir}",
            "stage.init_from=null", "stage.understanding_zero_target=true", "data.task_weights.text=0",
            "data.batch_size=4", "data.eval_batch_size=8", "data.num_workers=0", "data.shuffle_buffer=20",
            "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1.0",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", *extra,
        ])
        build = train.build_trainer
        train.build_trainer = lambda c: build(c, [Reference(), *callbacks])
        try:
            return train.run(cfg)
        finally:
            train.build_trainer = build

    run("ref", [])
    cut = run("cut", [StopAt()])
    run("cut", [], f"resume_from={cut['checkpoint']}")
    exit_process(0)  # as `python -m cheers_pl` ends: no interpreter teardown of the gloo group
""")


@pytest.fixture(scope="module")
def fsdp(shard_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    (out / "driver.py").write_text(DRIVER)
    proc = subprocess.run(
        [sys.executable, str(out / "driver.py"), str(shard_dir), str(out)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


@pytest.mark.slow
def test_fsdp_ema_is_sharded_and_equals_the_unsharded_ema(fsdp: Path) -> None:
    ranks = [json.loads((fsdp / f"ref-rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    total = ranks[0]["total"]
    # FSDP splits each flat parameter evenly, frozen elements included, so the trainable share per rank is uneven
    assert sum(r["local"] for r in ranks) == total and all(0 < r["local"] < 0.75 * total for r in ranks)
    assert [r["ema_bytes"] for r in ranks] == [4 * r["local"] for r in ranks]  # fp32, this rank's shard only
    ref = torch.load(fsdp / "ref-ref.pt", weights_only=True)
    ckpt = read_checkpoint(fsdp / "ref" / "checkpoints" / "last.ckpt")
    assert set(ref["ema"]) <= set(ckpt["state_dict"])
    for name, value in ref["ema"].items():
        assert torch.equal(ckpt["state_dict"][name], value), name
        assert torch.equal(ckpt["current_model_state"][name], ref["weights"][2][name]), name
    exported = pipeline_from_checkpoint(fsdp / "ref" / "checkpoints" / "last.ckpt").model.state_dict()
    assert all(torch.equal(exported[n.removeprefix("model.")], v) for n, v in ref["ema"].items())


@pytest.mark.slow
def test_fsdp_nan_on_one_rank_skips_the_step_on_both(fsdp: Path) -> None:
    ranks = [json.loads((fsdp / f"ref-rank{r}.json").read_text()) for r in range(2)]
    assert [r["skipped"] for r in ranks] == [1, 1]
    weights = torch.load(fsdp / "ref-ref.pt", weights_only=True)["weights"]
    assert all(torch.equal(weights[1][n], weights[0][n]) for n in weights[0])  # step 1 changed nothing
    assert not all(torch.equal(weights[2][n], weights[1][n]) for n in weights[0])


@pytest.mark.slow
def test_fsdp_uneven_validation_shards_end_together_and_are_counted(fsdp: Path) -> None:
    ranks = [json.loads((fsdp / f"ref-rank{r}.json").read_text()) for r in range(2)]
    assert [r["left_out"] for r in ranks] == [16, 0]  # 40 vs 24 samples, batches of 8: rank 0 stops after 3 of 5


@pytest.mark.slow
def test_fsdp_resume_continues_weights_and_ema_exactly(fsdp: Path) -> None:
    ref = read_checkpoint(fsdp / "ref" / "checkpoints" / "last.ckpt")
    resumed = read_checkpoint(fsdp / "cut" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == ref["global_step"] == 3
    for key in ("state_dict", "current_model_state"):
        for name, value in ref[key].items():
            assert torch.equal(resumed[key][name], value), f"{key} {name}"
