"""Skipping non-finite steps (cheers_pl/callbacks/nonfinite.py): weights, AdamW state and EMA untouched (R11)."""

import copy
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from cheers_pl.callbacks.ema import EMACallback, trainable
from cheers_pl.callbacks.nonfinite import NonFiniteConfig, NonFiniteError, NonFiniteGuard, all_finite
from cheers_pl.checkpoint import AtomicCheckpointIO
from tests.callbacks._tiny_run import StepRecorder, tiny_run


class FakeStrategy:
    """One rank of several: `others_bad` is what the other ranks vote."""

    def __init__(self, others_bad: bool = False) -> None:
        self.others_bad = others_bad
        self.checkpoint_io = AtomicCheckpointIO()

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return (decision and not self.others_bad) if all else (decision or self.others_bad)

    def broadcast(self, obj):
        return obj


def _setup(others_bad: bool = False, k: int = 3):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.1)
    p.grad = torch.full((3,), 0.5)
    opt.step()  # state exists before the step under test
    guard = NonFiniteGuard(NonFiniteConfig(max_consecutive_skips=k))
    trainer = SimpleNamespace(strategy=FakeStrategy(others_bad), global_step=7, callbacks=[guard])
    return p, opt, guard, trainer


def _step(p, opt, guard, trainer, losses: list[float], grad: torch.Tensor) -> tuple[torch.Tensor, dict]:
    before = (p.detach().clone(), copy.deepcopy(opt.state[p]))
    for loss in losses:  # the micro-batches of one accumulated step
        guard.on_before_backward(trainer, None, torch.tensor(loss))
    p.grad = grad
    guard.on_before_optimizer_step(trainer, None, opt)
    opt.step()
    trainer.global_step += 1
    return before


def _unchanged(p, opt, before) -> bool:
    weight, state = before
    return torch.equal(p, weight) and all(torch.equal(opt.state[p][k], v) for k, v in state.items())


@pytest.mark.parametrize(
    ("losses", "grad", "others_bad"),
    [
        ([float("nan"), 1.0], torch.ones(3), False),  # NaN loss in the first micro-batch of two, finite gradient
        ([1.0, 1.0], torch.tensor([1.0, float("inf"), 1.0]), False),  # finite losses, one Inf gradient element
        ([1.0], torch.ones(3), True),  # all finite here, another rank had a NaN: every rank skips
    ],
)
def test_a_non_finite_step_changes_no_weight_and_no_optimizer_state(losses, grad, others_bad) -> None:
    p, opt, guard, trainer = _setup(others_bad)
    before = _step(p, opt, guard, trainer, losses, grad)
    assert _unchanged(p, opt, before) and p.grad is None
    assert guard.last_step_skipped and guard.skipped_total == guard.consecutive == 1


def test_a_finite_step_updates_and_resets_the_streak() -> None:
    p, opt, guard, trainer = _setup()
    _step(p, opt, guard, trainer, [float("nan")], torch.ones(3))
    before = _step(p, opt, guard, trainer, [1.0], torch.ones(3))
    assert not _unchanged(p, opt, before)
    assert not guard.last_step_skipped and guard.consecutive == 0 and guard.skipped_total == 1
    assert guard.last_good_step == 9 and guard.state_dict() == {"skipped_total": 1, "consecutive": 0, "last_good": 9}


def test_k_consecutive_skips_stop_with_the_step_and_the_last_checkpoint(tmp_path) -> None:
    p, opt, guard, trainer = _setup(k=2)
    trainer.strategy.checkpoint_io.save_checkpoint({"global_step": 7}, tmp_path / "last.ckpt")
    _step(p, opt, guard, trainer, [1.0], torch.ones(3))  # good: weights of step 8
    _step(p, opt, guard, trainer, [float("inf")], torch.ones(3))
    with pytest.raises(NonFiniteError, match=r"stopped at step 9: 2 consecutive .* those of step 8; .*last.ckpt \(st"):
        _step(p, opt, guard, trainer, [float("nan")], torch.ones(3))


def test_all_finite_uses_the_max_so_large_finite_gradients_pass() -> None:
    assert bool(all_finite([torch.full((4,), 1e30), torch.zeros(0)]))  # a sum of squares would overflow to inf
    assert not bool(all_finite([torch.ones(2), torch.tensor([float("nan")])]))
    assert bool(all_finite([]))


class InjectNaN(L.Callback):
    """Makes one gradient element NaN in the given micro-batches (after their backward)."""

    def __init__(self, micro_batches: set[int]) -> None:
        self.micro_batches, self.batch_idx = micro_batches, -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batch_idx = batch_idx

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.batch_idx in self.micro_batches:
            next(p for p in pl_module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")


class Snapshots(L.Callback):
    """Trainable weights, AdamW state and EMA after every optimizer step (at the step's last micro-batch)."""

    def __init__(self) -> None:
        self.after: dict[int, tuple] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        ema = next(c for c in trainer.callbacks if isinstance(c, EMACallback))
        opt = trainer.optimizers[0]
        weights = [p.detach().clone() for p in trainable(pl_module)]
        state = [{k: v.clone() for k, v in opt.state[p].items()} for p in trainable(pl_module)]
        self.after[trainer.global_step - 1] = (weights, state, [e.clone() for e in ema.ema])


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_an_injected_nan_under_accumulation_skips_that_step_only(monkeypatch, shard_dir, tmp_path) -> None:
    """4 steps of 2 micro-batches; a NaN gradient in micro-batch 5 (step 2's second): step 2 changes nothing."""
    snaps, recorder = Snapshots(), StepRecorder()
    overrides = ["trainer.max_steps=4", "trainer.accumulate_grad_batches=2", "callbacks.ema.decay=0.5"]
    result = tiny_run(monkeypatch, shard_dir, tmp_path, "nan", overrides, [InjectNaN({5}), snaps, recorder])
    assert result["global_step"] == 4 and result["train/skipped_steps"] == 1.0
    w, state, ema = zip(*(snaps.after[s] for s in range(4)), strict=True)
    assert _same(w[2], w[1]) and _same(ema[2], ema[1])  # the skipped step
    assert all(torch.equal(a[k], b[k]) for a, b in zip(state[2], state[1], strict=True) for k in a)
    for s in (1, 3):  # the steps around it train and average as usual
        assert not _same(w[s], w[s - 1]) and not _same(ema[s], ema[s - 1])
    assert all(torch.isfinite(t).all() for t in [*w[3], *ema[3]])


@pytest.mark.slow
def test_k_nans_in_a_row_stop_the_run_naming_step_and_checkpoint(monkeypatch, shard_dir, tmp_path) -> None:
    overrides = ["trainer.max_steps=8", "checkpoint.every_n_steps=2", "nonfinite.max_consecutive_skips=3"]
    with pytest.raises(NonFiniteError) as err:
        tiny_run(monkeypatch, shard_dir, tmp_path, "nans", overrides, [InjectNaN({3, 4, 5, 6, 7})])
    message = str(err.value)
    assert "stopped at step 5: 3 consecutive" in message and "those of step 3" in message
    assert f"{tmp_path}/nans/checkpoints/last.ckpt (step 4)" in message
