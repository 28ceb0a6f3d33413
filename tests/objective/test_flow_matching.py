from types import SimpleNamespace

import pytest
import torch

from cheers_pl.objective.flow_matching import (
    DATA_PREDICTION_MIN_GAP,
    FlowMatchingConfig,
    flow_loss,
    interpolate,
    noise_like,
    sample_t,
    target_velocity,
    training_losses,
    velocity_from_prediction,
)
from cheers_pl.objective.sampling import euler, time_grid, warp_time


def test_path_endpoints_and_midpoint():
    x0, x1 = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(3)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(3)), x1)
    t = torch.tensor([0.0, 0.25, 1.0])
    xt = interpolate(x0, x1, t)
    torch.testing.assert_close(xt[1], 0.25 * x1[1] + 0.75 * x0[1])
    torch.testing.assert_close(interpolate(x0, x1, torch.tensor(0.5)), (x0 + x1) / 2)


def test_velocity_is_time_derivative_of_path():
    x0, x1 = torch.randn(2, 5), torch.randn(2, 5)
    t, dt = torch.full((2,), 0.3), 1e-3
    finite_diff = (interpolate(x0, x1, t + dt) - interpolate(x0, x1, t)) / dt
    torch.testing.assert_close(finite_diff, target_velocity(x0, x1), atol=1e-3, rtol=1e-3)


def test_oracle_velocity_gives_zero_loss_and_wrong_one_does_not():
    x0, x1 = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    assert flow_loss(x1 - x0, x0, x1).item() == 0.0
    assert flow_loss(torch.zeros_like(x0), x0, x1).item() == pytest.approx((x1 - x0).pow(2).mean().item())


def test_loss_averages_over_generation_slots_only():
    x0, x1 = torch.randn(4, 6), torch.randn(4, 6)
    v = x1 - x0
    v[2:] += 10.0  # understanding slots: predictions there must not matter
    is_gen = torch.tensor([True, True, False, False])
    assert flow_loss(v, x0, x1, weight_B=is_gen).item() == 0.0
    v_bad = v.clone()
    v_bad[0] += 1.0
    assert flow_loss(v_bad, x0, x1, weight_B=is_gen).item() == pytest.approx(0.5)
    # no generation slot: zero, but still part of the graph
    v_req = v.clone().requires_grad_(True)
    loss = flow_loss(v_req, x0, x1, weight_B=torch.zeros(4))
    loss.backward()
    assert loss.item() == 0.0 and v_req.grad is not None
    with pytest.raises(ValueError, match="weight_B"):
        flow_loss(v, x0, x1, weight_B=torch.ones(3))


def test_understanding_zero_target_matches_official_convention():
    x0, x1 = torch.randn(4, 6), torch.randn(4, 6)
    is_gen = torch.tensor([1.0, 0.0, 1.0, 0.0])
    v = torch.zeros(4, 6)
    v[[0, 2]] = (x1 - x0)[[0, 2]]
    assert flow_loss(v, x0, x1, weight_B=is_gen, understanding_zero_target=True).item() == 0.0
    v[1] = 2.0
    expected = (4.0 * 6) / (4 * 6)  # one slot of six 2² errors, mean over all four slots
    assert flow_loss(v, x0, x1, weight_B=is_gen, understanding_zero_target=True).item() == pytest.approx(expected)


def test_uniform_sampling_range_and_mean():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, FlowMatchingConfig(), generator=g)
    assert t.shape == (20000,) and t.dtype == torch.float32
    assert t.min() >= 0 and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)


def test_logit_normal_sampling_in_open_interval_and_mean_follows_logit_mean():
    g = torch.Generator().manual_seed(0)
    t = sample_t(20000, FlowMatchingConfig(t_sampling="logit_normal"), generator=g)
    assert t.min() > 0 and t.max() < 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.01)
    t_hi = sample_t(20000, FlowMatchingConfig(t_sampling="logit_normal", logit_mean=1.0), generator=g)
    assert t_hi.mean() > 0.65
    assert (t.std() < torch.rand(20000, generator=g).std()).item()  # concentrated in the middle


def test_shift_moves_mass_towards_noise():
    cfg = FlowMatchingConfig(shift=3.0)
    t_shift = sample_t(5000, cfg, generator=torch.Generator().manual_seed(1))
    t_plain = sample_t(5000, FlowMatchingConfig(), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(t_shift, warp_time(t_plain, 1 / 3))
    # SD3 form on the noise level σ = 1 − t
    sigma = 1 - t_plain
    torch.testing.assert_close(1 - t_shift, 3 * sigma / (1 + 2 * sigma))
    assert t_shift.mean() < t_plain.mean() - 0.1


def test_sampling_is_deterministic_under_seed():
    cfg = FlowMatchingConfig(t_sampling="logit_normal")
    a = sample_t(8, cfg, generator=torch.Generator().manual_seed(7))
    b = sample_t(8, cfg, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_config_validation():
    with pytest.raises(ValueError, match="t_sampling"):
        FlowMatchingConfig(t_sampling="beta")
    with pytest.raises(ValueError, match="shift"):
        FlowMatchingConfig(shift=0.0)
    with pytest.raises(ValueError, match="loss_weighting"):
        FlowMatchingConfig(loss_weighting="snr")


def test_training_losses_oracle_network_gives_zero_and_sees_the_path():
    """The network that returns x1 − x0 scores zero; it is called with x_t = t·x1 + (1−t)·x0 and the batch's t."""
    x1, t = torch.randn(4, 3, 2, 2), torch.tensor([1.0, 0.0, 0.5, 0.25])
    x0 = torch.randn_like(x1)
    seen = {}

    def oracle(x_t, t_B):
        seen.update(x_t=x_t, t=t_B)
        return SimpleNamespace(velocity=x1 - x0, extra="logits")

    out = training_losses(oracle, x1, t, x0=x0)
    assert out.loss == 0 and out.output.extra == "logits"
    torch.testing.assert_close(seen["x_t"], interpolate(x0, x1, t))
    assert torch.equal(seen["x_t"][0], x1[0]) and torch.equal(seen["x_t"][1], x0[1]) and torch.equal(seen["t"], t)
    wrong = training_losses(lambda x_t, t_B: SimpleNamespace(velocity=torch.zeros_like(x1)), x1, t, x0=x0)
    torch.testing.assert_close(wrong.loss, (x1 - x0).pow(2).mean())


def test_training_losses_noise_is_seeded_and_shapes_are_checked():
    x1, t = torch.randn(2, 5), torch.tensor([0.3, 0.6])
    net = lambda x_t, t_B: SimpleNamespace(velocity=x_t)  # noqa: E731
    a = training_losses(net, x1, t, generator=torch.Generator().manual_seed(1))
    b = training_losses(net, x1, t, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.x0, b.x0) and torch.equal(a.x0, noise_like(x1, torch.Generator().manual_seed(1)))
    with pytest.raises(ValueError, match=r"t_B must have shape \(2,\)"):
        training_losses(net, x1, t[:1])
    empty = training_losses(net, x1[:0], t[:0])  # no image row in the batch: a zero, not NaN
    assert empty.loss == 0 and not empty.loss.isnan()


def test_data_prediction_oracle_is_the_true_velocity_and_euler_lands_on_it():
    """A network that predicts x1 exactly gives the straight-path velocity (zero loss) below the clamp, and one Euler
    step from any t to 1 lands on x1; "velocity" passes the output through."""
    x0, x1 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.0, 0.3, 0.9, 0.5])
    x_t = interpolate(x0, x1, t)
    v = velocity_from_prediction(x1, x_t, t, "data")
    torch.testing.assert_close(v, target_velocity(x0, x1), atol=1e-5, rtol=1e-5)
    assert flow_loss(v, x0, x1) < 1e-10
    torch.testing.assert_close(velocity_from_prediction(x1, x_t, t, "velocity"), x1, rtol=0, atol=0)
    # near t = 1 the gap is clamped: the velocity stays finite
    t_end = torch.full((4,), 1.0)
    assert velocity_from_prediction(x1 + 1, x1, t_end, "data").abs().max() <= 1 / DATA_PREDICTION_MIN_GAP + 1e-4
    times = time_grid(5, alpha=0.5)
    out = euler(lambda x, tb: velocity_from_prediction(x1, x, tb, "data"), x0, times)
    torch.testing.assert_close(out, x1, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prediction must be one of"):
        velocity_from_prediction(x1, x_t, t, "noise")


def test_data_weighting_is_the_mse_of_the_data_estimate():
    """With loss_weighting="data" the loss is the (1 − t)²-weighted mean of the velocity MSEs, i.e. the MSE of the
    data estimate x̂1 = x_t + (1 − t)·v̂ normalised by the weights; generation-slot weights still mask rows; the
    oracle still scores zero; the zero-target variant refuses it."""
    x1, x0 = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.0, 0.5, 0.9, 0.2])  # all below the clamp of 1 − t
    v_hat = torch.randn_like(x1)
    net = lambda x_t, t_B: SimpleNamespace(velocity=v_hat)  # noqa: E731
    out = training_losses(net, x1, t, x0=x0, loss_weighting="data")
    x_hat = interpolate(x0, x1, t) + (1 - t).view(-1, 1, 1, 1) * v_hat
    w = (1 - t).pow(2)
    torch.testing.assert_close(out.loss, (x_hat - x1).pow(2).flatten(1).mean(1).sum() / w.sum())
    plain = training_losses(net, x1, t, x0=x0)
    assert not torch.isclose(out.loss, plain.loss)  # the weighting changes the loss
    masked = training_losses(net, x1, t, torch.tensor([1.0, 0.0, 1.0, 0.0]), x0=x0, loss_weighting="data")
    mse = (v_hat - (x1 - x0)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(masked.loss, (w[0] * mse[0] + w[2] * mse[2]) / (w[0] + w[2]))
    oracle = training_losses(lambda x_t, t_B: SimpleNamespace(velocity=x1 - x0), x1, t, x0=x0, loss_weighting="data")
    assert oracle.loss == 0
    with pytest.raises(ValueError, match="zero-target"):
        training_losses(net, x1, t, torch.ones(4), x0=x0, understanding_zero_target=True, loss_weighting="data")
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        training_losses(net, x1, t, x0=x0, loss_weighting="snr")
