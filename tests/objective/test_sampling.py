import pytest
import torch

from cheers_pl.objective.sampling import (
    SAMPLERS,
    SamplingConfig,
    euler,
    guided_velocity,
    heun,
    initial_noise,
    solve,
    time_grid,
    warp_time,
)


def test_warp_time_identity_fixed_ends_and_bias_towards_noise():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    torch.testing.assert_close(warp_time(t, 1.0), t)
    warped = warp_time(t, 0.5)
    assert warped[0] == 0 and warped[-1] == 1
    assert (warped[1:-1] < t[1:-1]).all()
    grid = time_grid(10, alpha=0.5)
    steps = grid.diff()
    assert grid.shape == (11,) and grid[0] == 0 and grid[-1] == 1
    assert (steps > 0).all() and steps[0] < steps[-1]  # smaller steps near noise (t = 0)
    assert (grid < 0.5).sum() > 5  # more than half the steps spent below t = 0.5
    with pytest.raises(ValueError, match="alpha"):
        warp_time(t, 0.0)


def test_euler_integrates_constant_field_exactly():
    b = torch.randn(3, 4)
    x0 = torch.randn(3, 4)
    x1 = euler(lambda x, t: b.expand_as(x), x0, time_grid(7, alpha=0.5))
    torch.testing.assert_close(x1, x0 + b)


def test_heun_integrates_affine_in_t_field_exactly_and_euler_does_not():
    a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)

    def fn(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return a * t_B[:, None] + b

    x0 = torch.randn(2, 5, dtype=torch.float64)
    exact = x0 + a / 2 + b  # ∫₀¹ (a·t + b) dt
    times = time_grid(4, dtype=torch.float64)
    torch.testing.assert_close(heun(fn, x0, times), exact)
    assert not torch.allclose(euler(fn, x0, times), exact)


def test_heun_beats_euler_on_state_dependent_field():
    x0 = torch.ones(1, 1, dtype=torch.float64)  # dx/dt = x → e
    exact = torch.e
    times = time_grid(10, dtype=torch.float64)
    err_euler = (euler(lambda x, t: x, x0, times) - exact).abs().item()
    err_heun = (heun(lambda x, t: x, x0, times) - exact).abs().item()
    assert err_heun < err_euler / 10


def test_callback_receives_each_step_and_times_are_batched():
    seen = []
    x0 = torch.zeros(2, 3)
    record = lambda i, t, x, v: seen.append((i, t.clone()))  # noqa: E731
    solve(lambda x, t: torch.ones_like(x), x0, num_steps=5, alpha=1.0, sampler="euler", callback=record)
    assert [i for i, _ in seen] == list(range(5))
    assert all(t.shape == (2,) for _, t in seen)
    assert seen[0][1][0] == 0.0
    assert set(SAMPLERS) == {"euler", "heun"}
    with pytest.raises(ValueError, match="sampler"):
        solve(lambda x, t: x, x0, 3, alpha=1.0, sampler="rk45")
    with pytest.raises(ValueError, match="sampling.sampler must be one of"):
        SamplingConfig(sampler="rk45")
    assert SamplingConfig() == SamplingConfig(num_steps=80, guidance_scale=9.5, alpha=0.5, sampler="euler")  # paper


def _cond_uncond_fn(v_c: torch.Tensor, v_u: torch.Tensor):
    calls = []

    def fn_batched(x: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        half = x.shape[0] // 2
        assert torch.equal(x[:half], x[half:]) and torch.equal(t_B[:half], t_B[half:])
        return torch.cat([v_c, v_u])

    return fn_batched, calls


def test_guidance_scale_one_is_conditional_and_zero_is_unconditional():
    v_c, v_u = torch.randn(2, 4), torch.randn(2, 4)
    x, t = torch.randn(2, 4), torch.rand(2)
    fn_batched, calls = _cond_uncond_fn(v_c, v_u)
    torch.testing.assert_close(guided_velocity(fn_batched, 1.0)(x, t), v_c)
    torch.testing.assert_close(guided_velocity(fn_batched, 0.0)(x, t), v_u)
    torch.testing.assert_close(guided_velocity(fn_batched, 3.0)(x, t), v_u + 3.0 * (v_c - v_u))
    assert calls == [4, 4, 4]  # cond and uncond in one batch


def test_sampler_determinism_with_seeded_generator():
    def run(seed: int) -> torch.Tensor:
        x0 = initial_noise((2, 3, 4, 4), generator=torch.Generator().manual_seed(seed))
        return solve(lambda x, t: -x * t[:, None, None, None], x0, num_steps=6, alpha=0.5, sampler="heun")

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    noise = initial_noise((2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert noise.dtype == torch.float64 and noise.shape == (2, 3)


def test_official_grid_has_n_points_then_an_extra_step_of_one_over_n():
    """The released sampler: warp(linspace(0, 1, N)) (N velocity evaluations, the last at t = 1), then one more Euler
    step of 1/N taken at t = 1."""
    n, alpha = 10, 0.5
    grid = time_grid(n, alpha, grid="official", dtype=torch.float64)
    assert grid.shape == (n + 1,)
    torch.testing.assert_close(grid[:n], warp_time(torch.linspace(0, 1, n, dtype=torch.float64), alpha))
    assert grid[n - 1] == 1.0 and grid[n] == 1.0 + 1.0 / n
    native = time_grid(n, alpha, dtype=torch.float64)
    assert native.shape == (n + 1,) and native[-1] == 1.0 and not torch.allclose(native, grid)
    seen = []
    b, x0 = torch.randn(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    x = solve(lambda x, t: seen.append(t[0].item()) or b.expand_as(x), x0, n, alpha, "euler", grid="official")
    torch.testing.assert_close(x, x0 + (1 + 1 / n) * b)  # overshoots t = 1 by the extra step
    assert len(seen) == n and seen[-1] == 1.0


def test_grids_from_t0_take_int_n_times_one_minus_t0_steps():
    """Editing starts at t0: int(N·(1 − t0)) steps (72 of 80 for t0 = 0.1), the first velocity at warp(t0)."""
    official = time_grid(80, 0.5, grid="official", t0=0.1, dtype=torch.float64)
    native = time_grid(80, 0.5, t0=0.1, dtype=torch.float64)
    assert official.shape == (72 + 1,) and native.shape == (72 + 1,)
    assert abs(official[0].item() - 0.1 * 0.5 / (1 - 0.5 * 0.1)) < 1e-12  # warp(0.1) ≈ 0.0526
    assert native[0] == official[0] and native[-1] == 1.0 and official[-1] == 1 + 1 / 72
    with pytest.raises(ValueError, match="steps"):
        time_grid(5, grid="official", t0=0.9)
    with pytest.raises(ValueError, match="time_grid"):
        SamplingConfig(time_grid="karras")
    with pytest.raises(ValueError, match="unconditional"):
        SamplingConfig(unconditional="nothing")
