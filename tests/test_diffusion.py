"""Tests for diffusion.py: schedule constants, parameterisations, samplers, inversion."""
import math

import pytest
import torch

import diffusion as D


@pytest.fixture(scope="module")
def sched():
    return D.make_schedule("cosine", 1000, zero_terminal_snr=True)


def test_schedules():
    for betas in (D.linear_beta_schedule(), D.cosine_beta_schedule()):
        ab = torch.cumprod(1 - betas, 0)
        assert (ab[1:] < ab[:-1]).all() and 0 < ab[-1] < ab[0] < 1
    betas = D.cosine_beta_schedule(1000)
    ab = torch.cumprod(1 - betas, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2
    assert abs(ab[499].item() - f(500) / f(0)) < 1e-6
    z = D.Schedule(D.rescale_zero_terminal_snr(betas))
    assert z.alphas_cumprod[-1] < 1e-12 and abs(z.alphas_cumprod[0] - ab[0]) < 1e-12


def test_q_sample_statistics(sched):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 8, generator=g).expand(20000, 8)
    t = torch.full((20000,), 300)
    x_t = D.q_sample(sched, x0, t, torch.randn(20000, 8, generator=g))
    ab = sched.alphas_cumprod[300].item()
    assert torch.allclose(x_t.mean(0), math.sqrt(ab) * x0[0], atol=0.02)
    assert torch.allclose(x_t.var(0), torch.full((8,), 1 - ab, dtype=x_t.dtype), atol=0.03)


def test_parameterisations_round_trip(sched):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(6, 3, 4, generator=g, dtype=torch.float64), \
        torch.randn(6, 3, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 500, 900, 998])
    x_t = D.q_sample(sched, x0, t, eps)
    assert torch.allclose(D.predict_x0_from_eps(sched, x_t, t, eps), x0, atol=1e-8)
    x0_v, eps_v = D.x0_eps_from_v(sched, x_t, t, D.v_target(sched, x0, eps, t))
    assert torch.allclose(x0_v, x0, atol=1e-10) and torch.allclose(eps_v, eps, atol=1e-10)


def test_posterior_variance_matches_closed_form():
    """beta~_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t from the betas alone."""
    sched = D.make_schedule("linear", 100, zero_terminal_snr=False)
    betas = D.linear_beta_schedule(100).double()
    for t in (1, 40, 99):
        ab, ab_prev = torch.prod(1 - betas[:t + 1]), torch.prod(1 - betas[:t])
        assert torch.isclose(sched.posterior_variance[t], (1 - ab_prev) / (1 - ab) * betas[t])
    assert sched.posterior_variance[0] == 0                 # x_0 given x_0 is certain


def test_eta_one_reproduces_ddpm_variance(sched):
    """sigma_t(eta = 1)^2 with t_prev = t - 1 equals the DDPM posterior variance."""
    x_t, pred, noise = torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64), \
        torch.ones(1, 1, dtype=torch.float64)
    for t in (1, 5, 100, 500, 990):
        # With x0_pred = eps = 0 (v = 0 at x_t = 0) the step is exactly sigma * noise.
        step = D.ddim_step(sched, x_t, t, t - 1, pred, "v", eta=1.0, noise=noise)
        assert step.item() ** 2 == pytest.approx(sched.posterior_variance[t].item(), rel=1e-9)


def _gaussian_oracle(sched, mu, s, prediction):
    """The exact denoiser of data ~ N(mu, s^2 I)."""
    def model(x_t, t, context):
        ab = D._at(sched.alphas_cumprod, t, x_t)
        eps = (x_t - ab.sqrt() * mu) * (1 - ab).sqrt() / (ab * s ** 2 + 1 - ab)
        if prediction == "eps":
            return eps
        x0 = mu + ab.sqrt() * s ** 2 * (x_t - ab.sqrt() * mu) / (ab * s ** 2 + 1 - ab)
        return D.v_target(sched, x0, eps, t)
    return model


@pytest.mark.parametrize("t_start", [None, 600])
def test_samplers_land_on_point_mass(sched, t_start):
    """Data = a single point x*: every sampler must end there, from any start."""
    target = torch.tensor([[1.5, -0.5, 0.25]], dtype=torch.float64)
    model = _gaussian_oracle(sched, target, 1e-4, "v")
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(4, 3, generator=g, dtype=torch.float64)
    for out in (D.ddim_sample(model, sched, x_T, None, 10, t_start=t_start),
                D.ddpm_sample(model, sched, x_T, None, 50, t_start=t_start, generator=g)):
        assert torch.allclose(out, target.expand(4, 3), atol=1e-3)


def test_ddim_inversion_round_trip(sched):
    """Invert with DDIM (eta = 0) under an exact analytic denoiser, sample back: the start."""
    mu, s = 0.3, 0.7
    model = _gaussian_oracle(sched, mu, s, "v")
    g = torch.Generator().manual_seed(4)
    x0 = mu + s * torch.randn(8, 16, generator=g, dtype=torch.float64)
    for steps, t_end in ((10, 700), (50, 950), (25, 300)):
        x_t = D.ddim_invert(model, sched, x0, None, steps, t_end=t_end)
        back = D.ddim_sample(model, sched, x_t, None, steps, t_start=t_end)
        assert (back - x0).abs().max() < 1e-3
        assert (x_t - x0).abs().max() > 0.1                   # it did move away from x0
    # Without the fixed-point refinement the classic inversion is only first-order.
    x_t = D.ddim_invert(model, sched, x0, None, 10, t_end=700, fixed_point_iters=0)
    assert (D.ddim_sample(model, sched, x_t, None, 10, t_start=700) - x0).abs().max() > 1e-2


def test_classifier_free_guidance_is_one_batched_call():
    calls = []

    def model(x, t, c):
        calls.append(len(x))
        return x * c.sum(dim=(1, 2))[:, None]

    x, t = torch.randn(3, 4), torch.zeros(3, dtype=torch.long)
    cond, null = torch.randn(3, 2, 5), torch.randn(3, 2, 5)
    out = D.guided_prediction(model, x, t, cond, null, guidance=3.0)
    assert calls == [6]
    expected = 3.0 * model(x, t, cond) + (1 - 3.0) * model(x, t, null)
    assert torch.allclose(out, expected, atol=1e-5)
    calls.clear()
    assert torch.equal(D.guided_prediction(model, x, t, cond, null, guidance=1.0),
                       model(x, t, cond))                      # w = 1 is the conditional output
    assert calls == [3, 3]


@pytest.mark.parametrize("steps,t_start", [(10, None), (4, 499), (1000, None), (7, 3)])
def test_trailing_timesteps(steps, t_start):
    ts = D.ddim_timesteps(1000, steps, t_start)
    assert ts[0] == (999 if t_start is None else t_start)
    assert (ts[1:] < ts[:-1]).all() and ts[-1] >= 0 and len(ts) == min(steps, ts[0] + 1)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_training_loss_oracle_and_zero(sched, prediction):
    x0 = torch.full((512, 4), 0.3, dtype=torch.float64)
    oracle = _gaussian_oracle(sched, 0.3, 1e-6, prediction)
    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 990, (512,), generator=g)     # the oracle is exact away from t = T-1
    assert D.training_loss(sched, oracle, x0, None, prediction, g, t).item() < 1e-6
    zero = lambda x, t, c: torch.zeros_like(x)
    assert D.training_loss(sched, zero, x0, None, "eps", g).item() == pytest.approx(1.0, abs=0.1)


def test_transfer_modes(sched):
    """SDEdit lands on the target's data; inversion under the same condition is a round trip."""
    g = torch.Generator().manual_seed(6)
    x_src = torch.randn(3, 8, generator=g, dtype=torch.float64)
    target = torch.full((1, 8), 2.0, dtype=torch.float64)
    point = _gaussian_oracle(sched, target, 1e-4, "v")
    out = D.transfer(point, sched, x_src, None, steps=20, strength=0.8, generator=g)
    assert torch.allclose(out, target.expand(3, 8), atol=1e-3)
    gauss = _gaussian_oracle(sched, 0.0, 1.0, "v")
    same = D.transfer(gauss, sched, x_src, None, steps=20, strength=0.6, mode="inversion")
    assert torch.allclose(same, x_src, atol=1e-3)
    # The "previous" warm start saves one call a step: close, not exact, at one refinement.
    warm = D.transfer(gauss, sched, x_src, None, steps=20, strength=0.6, mode="inversion",
                      warm_start=True)
    assert 1e-4 < (warm - x_src).abs().max() < 1e-2
    with pytest.raises(ValueError, match="unknown transfer mode"):
        D.transfer(gauss, sched, x_src, None, steps=2, mode="cyclegan")


def test_ddim_update_is_ddim_step_arithmetic(sched):
    """ddim_update with the schedule's alpha_bar gives ddim_step's result (eta 0 and 1)."""
    torch.manual_seed(0)
    x_t, pred, noise = torch.randn(3, 2, 8), torch.randn(3, 2, 8), torch.randn(3, 2, 8)
    t, t_prev = 600, 400
    tt = torch.full((3,), t)
    x0, eps = D.x0_eps(sched, x_t, tt, pred, "v")
    for eta in (0.0, 1.0):
        a = D.ddim_step(sched, x_t, t, t_prev, pred, "v", eta=eta, noise=noise)
        b = D.ddim_update(x0, eps, sched.alphas_cumprod[t].item(),
                          sched.alphas_cumprod[t_prev].item(), eta, noise)
        assert torch.allclose(a, b, atol=1e-6)


def _counted_oracle(sched, mu, s):
    """(the v-prediction oracle of N(mu, s^2), the same counting its calls, the call list)."""
    oracle, calls = _gaussian_oracle(sched, mu, s, "v"), []

    def model(*args):
        calls.append(1)
        return oracle(*args)
    return oracle, model, calls


def test_warm_started_inversion_round_trip(sched):
    """The warm start (first guess from the last step's noise estimate: one model call a
    step) still converges: with refinements the round trip is exact, and it calls the model
    once a step fewer than the cold start (but for the first step)."""
    mu, s = 0.3, 0.7
    oracle, model, calls = _counted_oracle(sched, mu, s)
    g = torch.Generator().manual_seed(5)
    x0 = mu + s * torch.randn(8, 16, generator=g, dtype=torch.float64)
    x_t = D.ddim_invert(model, sched, x0, None, 25, t_end=600, fixed_point_iters=3,
                        warm_start=True)
    assert len(calls) == 25 * 3 + 1
    back = D.ddim_sample(oracle, sched, x_t, None, 25, t_start=600)
    assert (back - x0).abs().max() < 1e-3
    calls.clear()
    D.ddim_invert(model, sched, x0, None, 10, t_end=700, fixed_point_iters=1, warm_start=True)
    assert len(calls) == 11


def test_extrapolated_warm_start_is_the_most_exact_per_call(sched):
    """With one refinement a step (transfer.py's setting), the extrapolated first guess
    makes the round trip more exact than the last step's estimate (same calls) and than the
    cold start (one call a step more); on the trained model too (README)."""
    mu, s = 0.3, 0.7
    oracle, model, calls = _counted_oracle(sched, mu, s)
    x0 = mu + s * torch.randn(8, 16, generator=torch.Generator().manual_seed(6),
                              dtype=torch.float64)
    error = {}
    for warm_start in D.WARM_STARTS:
        calls.clear()
        x_t = D.ddim_invert(model, sched, x0, None, 10, t_end=700, fixed_point_iters=1,
                            warm_start=warm_start)
        assert len(calls) == (20 if warm_start == "off" else 11)
        error[warm_start] = (D.ddim_sample(oracle, sched, x_t, None, 10, t_start=700)
                             - x0).abs().max().item()
    assert error["extrapolate"] < error["off"] / 2 and error["extrapolate"] < error["previous"] / 2
    with pytest.raises(ValueError, match="unknown warm_start"):
        D.ddim_invert(oracle, sched, x0, None, 10, warm_start="guess")


def test_dpm_solver_follows_the_probability_flow_ode_closer_than_ddim(sched):
    """Data N(mu, s^2): the probability-flow ODE from pure noise x_T (zero terminal SNR)
    ends at exactly mu + s x_T (the standardised point is constant along it). With the
    exact denoiser, DPM-Solver++(2M) lands closer than DDIM at the same steps, and both
    converge with many."""
    mu = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    s = 0.3
    model = _gaussian_oracle(sched, mu, s, "v")
    x_T = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = mu + s * x_T

    def error(sampler, steps):
        return (sampler(model, sched, x_T, None, steps) - exact).abs().max().item()
    # Second order: the error falls as 1/steps^2 against DDIM's 1/steps, but from pure
    # noise the first step is first order for both (lambda = -inf), so few steps gain little.
    assert error(D.dpm_solver_sample, 6) < 0.9 * error(D.ddim_sample, 6)
    for steps in (20, 50):
        assert error(D.dpm_solver_sample, steps) < 0.3 * error(D.ddim_sample, steps)
    assert error(D.dpm_solver_sample, 50) < 1e-3
    x = D.dpm_solver_sample(model, sched, x_T, None, 1)       # one step: DDIM's one step
    assert torch.allclose(x, D.ddim_sample(model, sched, x_T, None, 1))
