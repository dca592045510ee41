"""Gaussian diffusion, model-agnostic: schedules, training loss, DDPM/DDIM samplers, inversion.

Follows Ho et al. 2020 (DDPM), Song et al. 2021 (DDIM), Nichol & Dhariwal 2021 (cosine
schedule), Salimans & Ho 2022 (v-prediction), Lin et al. 2024 (zero terminal SNR, trailing
timesteps), Meng et al. 2022 (SDEdit), Ho & Salimans 2022 (classifier-free guidance) and Bar-Tal et
al. 2023 (MultiDiffusion: a model of windows run over inputs of any length);
names follow openai/improved-diffusion. A model is any callable
model(x_t, t, context) -> prediction of eps or v, shaped like x_t.

    x0 --q_sample(t)--> x_t --ddim_step / ddpm posterior--> x_{t_prev} ... --> x0
"""
import math

import torch


# ---------------------------------------------------------------- schedules
def linear_beta_schedule(T=1000, beta_start=1e-4, beta_end=0.02):
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def cosine_beta_schedule(T=1000, s=0.008):
    """alpha_bar(t) = cos^2(((t/T + s) / (1 + s)) pi/2) (Nichol & Dhariwal 2021, eq. 17)."""
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    alphas_cumprod = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=0.999)


def rescale_zero_terminal_snr(betas):
    """Shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0 (Lin et al. 2024, Alg. 1):
    the last training step is pure noise, as sampling from noise assumes."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alphas_cumprod = sqrt_ab ** 2
    alphas = torch.cat([alphas_cumprod[:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


class Schedule:
    """Every per-timestep constant the maths needs, from betas (float64, indexed at use)."""

    def __init__(self, betas):
        self.betas = betas.double()
        self.T = len(betas)
        self.alphas = 1 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, 0)
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64),
                                              self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1 - self.alphas_cumprod).sqrt()
        # The variance of q(x_{t-1} | x_t, x_0) (DDPM eq. 7): DDIM's sigma at eta = 1 (its
        # eq. 16) equals it, which is how ddpm_sample is DDIM with eta = 1 (tested).
        self.posterior_variance = (self.betas * (1 - self.alphas_cumprod_prev)
                                   / (1 - self.alphas_cumprod))


def make_schedule(kind="cosine", T=1000, zero_terminal_snr=True):
    betas = cosine_beta_schedule(T) if kind == "cosine" else linear_beta_schedule(T)
    return Schedule(rescale_zero_terminal_snr(betas) if zero_terminal_snr else betas)


def _at(values, t, x):
    """values[t] for a batch of timesteps t (B,), shaped (B, 1, ..., 1) like x."""
    out = values.to(x.device)[t.to(x.device).long()].to(x.dtype)
    return out.view(-1, *([1] * (x.dim() - 1)))


# ---------------------------------------------------------------- forward process, targets
def q_sample(sched, x0, t, noise):
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps  (DDPM eq. 4)."""
    return _at(sched.sqrt_alphas_cumprod, t, x0) * x0 + \
        _at(sched.sqrt_one_minus_alphas_cumprod, t, x0) * noise


def predict_x0_from_eps(sched, x_t, t, eps):
    return (x_t - _at(sched.sqrt_one_minus_alphas_cumprod, t, x_t) * eps) / \
        _at(sched.sqrt_alphas_cumprod, t, x_t)


def v_target(sched, x0, eps, t):
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022)."""
    return _at(sched.sqrt_alphas_cumprod, t, x0) * eps - \
        _at(sched.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def x0_eps_from_v(sched, x_t, t, v):
    a, s = _at(sched.sqrt_alphas_cumprod, t, x_t), _at(sched.sqrt_one_minus_alphas_cumprod, t, x_t)
    return a * x_t - s * v, s * x_t + a * v


def alpha_sigma(sched, t, x):
    """(sqrt(alpha_bar_t), sqrt(1 - alpha_bar_t)) for timesteps t (B,), shaped like x;
    t = -1 is the clean end, (1, 0)."""
    alphas_cumprod = torch.cat([sched.alphas_cumprod, torch.ones(1, dtype=torch.float64)])
    return _at(alphas_cumprod.sqrt(), t, x), _at((1 - alphas_cumprod).sqrt(), t, x)


def x0_eps(sched, x_t, t, pred, prediction):
    """(x0_pred, eps_pred) from a model output of either parameterisation. With zero
    terminal SNR, eps-prediction cannot give x0 at t = T - 1 (alpha_bar = 0): use v there."""
    if prediction == "v":
        return x0_eps_from_v(sched, x_t, t, pred)
    return predict_x0_from_eps(sched, x_t, t, pred), pred


def training_loss(sched, model, x0, context, prediction="v", generator=None, t=None):
    """Simple loss: E || target - model(x_t, t, c) ||^2 with t uniform (DDPM eq. 14)."""
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, sched.T, (B,), generator=generator).to(x0.device)
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    x_t = q_sample(sched, x0, t, noise)
    target = v_target(sched, x0, noise, t) if prediction == "v" else noise
    return (model(x_t, t, context) - target).pow(2).mean()


# ---------------------------------------------------------------- guidance and samplers
def guided_prediction(model, x_t, t, context, null_context=None, guidance=1.0):
    """Classifier-free guidance: uncond + w (cond - uncond), both in ONE batched forward."""
    if null_context is None or guidance == 1.0:
        return model(x_t, t, context)
    pred = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([context, null_context]))
    cond, uncond = pred.chunk(2)
    return uncond + guidance * (cond - uncond)


def ddim_timesteps(T, steps, t_start=None):
    """`steps` timesteps, strictly decreasing, "trailing" spacing (Lin et al. 2024, Table 2):
    the first is t_start (default T - 1), so sampling starts where training saw pure noise."""
    t_start = T - 1 if t_start is None else int(t_start)
    steps = max(1, min(steps, t_start + 1))
    ts = torch.round(torch.arange(steps, 0, -1, dtype=torch.float64) * (t_start + 1) / steps) - 1
    return ts.long().clamp(min=0).unique_consecutive()


def ddim_step(sched, x_t, t, t_prev, pred, prediction="v", eta=0.0, noise=None):
    """x_{t_prev} from x_t (DDIM eq. 12), sigma from eq. 16; t_prev = -1 means x0.

    eta = 0 is deterministic DDIM; eta = 1 with t_prev = t - 1 is DDPM's ancestral step."""
    tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0_pred, eps = x0_eps(sched, x_t, tt, pred, prediction)
    if t_prev < 0:
        return x0_pred
    return ddim_update(x0_pred, eps, sched.alphas_cumprod[t].item(),
                       sched.alphas_cumprod[t_prev].item(), eta, noise)


def ddim_jump(sched, x_t, t, t_next, pred, prediction="v"):
    """Deterministic DDIM (eq. 12, eta = 0) with a timestep per item: x_t at t (B,) to
    t_next (B,), -1 meaning x0; ddim_step's arithmetic for a batch of mixed timesteps."""
    x0_pred, eps = x0_eps(sched, x_t, t, pred, prediction)
    a, s = alpha_sigma(sched, t_next, x_t)
    return a * x0_pred + s * eps


def ddim_update(x0_pred, eps, a_t, a_prev, eta=0.0, noise=None):
    """The DDIM update's arithmetic for any noise levels alpha_bar_t -> alpha_bar_prev,
    integer timesteps or continuous (GuideDiff): sqrt(a_prev) x0 + direction + sigma noise."""
    sigma = eta * math.sqrt((1 - a_prev) / max(1 - a_t, 1e-12) * (1 - a_t / a_prev))
    direction = math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps
    x_prev = math.sqrt(a_prev) * x0_pred + direction
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_sample(model, sched, x_t, context, steps, eta=0.0, guidance=1.0, null_context=None,
                t_start=None, generator=None, prediction="v", progress=None):
    """Denoise x_t (at t_start, default T - 1) to x0 in `steps` DDIM steps (eta = 1: DDPM)."""
    ts = ddim_timesteps(sched.T, steps, t_start).tolist()
    loop = list(zip(ts, ts[1:] + [-1]))
    for t, t_prev in (progress(loop) if progress else loop):
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        pred = guided_prediction(model, x_t, tt, context, null_context, guidance)
        noise = torch.randn(x_t.shape, generator=generator).to(x_t) if eta > 0 else None
        x_t = ddim_step(sched, x_t, t, t_prev, pred, prediction, eta, noise)
    return x_t


def dpm_solver_sample(model, sched, x_t, context, steps, guidance=1.0, null_context=None,
                      t_start=None, prediction="v", progress=None):
    """Denoise x_t to x0 with DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): a multistep
    second-order solver of the probability-flow ODE in log-SNR lambda = log(a / s) that
    works on the model's x0 predictions; first order at the first and last steps, as
    diffusers does for few steps (lower_order_final). Same grid and calls as ddim_sample.
    With zero terminal SNR the first step starts at lambda = -inf, where exp(-h) = 0."""
    ts = ddim_timesteps(sched.T, steps, t_start).tolist()
    loop = list(zip(ts, ts[1:] + [-1]))

    def log_snr(t):
        a, s = (math.sqrt(v) for v in ((sched.alphas_cumprod[t].item(),
                                        1 - sched.alphas_cumprod[t].item()) if t >= 0 else (1, 0)))
        return (math.log(a / s) if a > 0 and s > 0 else math.copysign(math.inf, a - 0.5)), a, s
    x0_prev, h_prev = None, None
    for i, (t, t_next) in enumerate(progress(loop) if progress else loop):
        tt = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        pred = guided_prediction(model, x_t, tt, context, null_context, guidance)
        x0 = x0_eps(sched, x_t, tt, pred, prediction)[0]
        (lam, _, s), (lam_next, a_next, s_next) = log_snr(t), log_snr(t_next)
        h = lam_next - lam
        D = x0
        if x0_prev is not None and t_next >= 0:            # second order: extrapolate x0
            r = h_prev / h
            D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x0_prev
        x_t = (s_next / s) * x_t - a_next * math.expm1(-h) * D if t_next >= 0 else x0
        x0_prev, h_prev = x0, h
    return x_t


def ddpm_sample(model, sched, x_t, context, steps=None, **kw):
    """Ancestral sampling (DDPM Alg. 2): DDIM with eta = 1, over all T steps by default."""
    return ddim_sample(model, sched, x_t, context, steps or sched.T, eta=1.0, **kw)


WARM_STARTS = ("off", "previous", "extrapolate")


def ddim_invert(model, sched, x0, context, steps, t_end=None, guidance=1.0, null_context=None,
                prediction="v", fixed_point_iters=3, warm_start=False, progress=None):
    """Run deterministic DDIM backwards, x0 -> x_{t_end}: the latent that ddim_sample with
    the same steps maps back to x0.

    Each step solves for the x_t whose DDIM step (model evaluated at x_t, t, as the sampler
    will) lands on the current x_{t_prev}: start from a first guess of the noise estimate
    and refine by fixed-point iteration, which makes the round trip exact up to the
    iteration's residual (cf. Pan et al. 2023; Garibi et al. 2024). The first guess:
      "off" (or False): a model call at x_{t_prev}, t (the classic inversion, Song et al. 2021);
      "previous": the previous step's final estimate, saving that call (all steps but the first);
      "extrapolate": linear extrapolation from the previous two steps' estimates, a
        predictor as in multistep ODE solvers (PNDM, Liu et al. 2022; DPM-Solver++, Lu et al.
        2022), the refinement its corrector: as cheap as "previous" and closer to exact.
    True means "previous"."""
    warm_start = {False: "off", True: "previous"}.get(warm_start, warm_start)
    if warm_start not in WARM_STARTS:
        raise ValueError(f"unknown warm_start {warm_start!r}: use one of {WARM_STARTS}")
    ts = ddim_timesteps(sched.T, steps, t_end).flip(0).tolist()        # increasing
    x_prev, history = x0, []                   # history: (t, final noise estimate) per step
    loop = list(zip([-1] + ts[:-1], ts))
    for t_prev, t in (progress(loop) if progress else loop):
        a_t = sched.alphas_cumprod[t].item()
        a_prev = sched.alphas_cumprod[t_prev].item() if t_prev >= 0 else 1.0
        tt = torch.full((x_prev.shape[0],), t, device=x_prev.device, dtype=torch.long)

        def up(eps):                         # x_t whose DDIM step with eps lands on x_prev
            x0_pred = (x_prev - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            return math.sqrt(a_t) * x0_pred + math.sqrt(1 - a_t) * eps

        if warm_start != "off" and history:
            t1, guess = history[-1]
            if warm_start == "extrapolate" and len(history) > 1:
                t2, eps2 = history[-2]
                guess = guess + (t - t1) / (t1 - t2) * (guess - eps2)
            x_t, iters = up(guess), max(1, fixed_point_iters)
        else:
            x_t, iters = x_prev, fixed_point_iters + 1
        for _ in range(iters):
            pred = guided_prediction(model, x_t, tt, context, null_context, guidance)
            eps = x0_eps(sched, x_t, tt, pred, prediction)[1]
            x_t = up(eps)
        history = history[-1:] + [(t, eps)]
        x_prev = x_t
    return x_prev


def sdedit(sched, x0, strength, generator=None):
    """Noise x0 to t_start = strength (T - 1) (Meng et al. 2022); denoise under the target
    style from there. Returns (x_t, t_start)."""
    t_start = int(round(strength * (sched.T - 1)))
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    t = torch.full((x0.shape[0],), t_start, device=x0.device, dtype=torch.long)
    return q_sample(sched, x0, t, noise), t_start


def transfer(model, sched, x_src, context_tgt, steps, strength=0.6, mode="sdedit",
             context_src=None, null_context=None, guidance=1.0, generator=None,
             prediction="v", progress=None, invert_iters=1, warm_start=False):
    """Move x_src to the target condition: the paper's style transfer in latent space.

    sdedit: noise x_src to t = strength (T - 1) and denoise under the target (Meng et al.).
    inversion: DDIM-invert x_src under its own condition up to that t, then regenerate under
    the target (the dual-diffusion-bridge idea, Su et al. 2023): deterministic, and keeps
    more of the source than fresh noise does. `steps` counts the denoising steps taken.
    Inversion runs the conditional model alone: inverting under guidance drifts (the
    reason for null-text inversion, Mokady et al. 2023), and it halves the cost. It takes
    invert_iters fixed-point refinements a step; a warm_start ("previous" or "extrapolate",
    see ddim_invert) saves one model call a step.
    """
    t_start = int(round(strength * (sched.T - 1)))
    if mode == "sdedit":
        x_t, _ = sdedit(sched, x_src, strength, generator)
    elif mode == "inversion":
        x_t = ddim_invert(model, sched, x_src, context_src, steps, t_end=t_start,
                          prediction=prediction, fixed_point_iters=invert_iters,
                          warm_start=warm_start, progress=progress)
    else:
        raise ValueError(f"unknown transfer mode {mode!r}: use 'sdedit' or 'inversion'")
    return ddim_sample(model, sched, x_t, context_tgt, steps, guidance=guidance,
                       null_context=null_context, t_start=t_start, generator=generator,
                       prediction=prediction, progress=progress)


# ---------------------------------------------------------------- long inputs: MultiDiffusion
def window_starts(length, window, overlap):
    """Starts of windows every window - overlap frames, the last one flush with the end."""
    if length <= window:
        return [0]
    return list(range(0, length - window, window - overlap)) + [length - window]


def window_weights(window, overlap):
    """(window,) weights rising over the first `overlap` frames and falling over the last:
    a frame is mostly predicted by the window it sits in the middle of. Never zero, so the
    song's first and last frames (one window each) are defined."""
    i = torch.arange(window, dtype=torch.float32)
    return (torch.minimum(i + 1, window - i) / (overlap + 1)).clamp(max=1.0)


def windowed(unet_model, length, window, overlap, batch=16, bf16=True, cond=None):
    """A model(x_t, t, context) over whole songs (B, C, F, length) built from a U-Net that
    sees windows: every window of every item in one batch (in chunks of `batch`), the
    predictions blended by window_weights. The DDIM step is affine in the prediction for a
    shared x_t, so blending predictions is MultiDiffusion's blending of the next latents.
    cond (1 or B, C', F, length): extra input channels (a source latent), cut into the
    same windows and concatenated to each."""
    starts = window_starts(length, window, overlap)
    w = min(window, length)
    weights = window_weights(w, overlap)                                    # (w,)
    total = torch.zeros(length)
    for s in starts:
        total[s:s + w] += weights

    def model(x_t, t, context):
        B, n = x_t.shape[0], len(starts)
        if cond is not None:
            x_t = torch.cat([x_t, cond.to(x_t).expand(B, -1, -1, -1)], 1)   # (B, C + C', F, L)
        crops = torch.stack([x_t[..., s:s + w] for s in starts], 1).flatten(0, 1)  # (B n, C, F, w)
        t, context = t.repeat_interleave(n), context.repeat_interleave(n, 0)
        size = -(-len(crops) // -(-len(crops) // batch))   # even chunks of at most batch
        with torch.autocast(x_t.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = torch.cat([unet_model(crops[i:i + size], t[i:i + size], context[i:i + size])
                              .float() for i in range(0, len(crops), size)])
        pred = pred.view(B, n, *pred.shape[1:]) * weights.to(pred)        # (B, n, C, F, w)
        blended = torch.zeros_like(x_t[:, :pred.shape[2]])
        for k, s in enumerate(starts):
            blended[..., s:s + w] += pred[:, k]
        return blended / total.to(blended)                                  # (B, C, F, length)

    return model


NOISE_BLOCK = 16384     # positional_noise: samples drawn from one seed


def positional_noise(lo, hi, seed, rows=(), rand=torch.randn, block=NOISE_BLOCK):
    """Noise (*rows, hi - lo) for positions lo..hi of a song: cut from fixed blocks, each
    drawn from its own seed, so any two spans agree where they overlap (the vocoder's
    starting noise and Griffin-Lim's starting phase are then one signal across blocks)."""
    pieces = [rand(*rows, block, generator=torch.Generator().manual_seed(seed * 100003 + j))
              for j in range(lo // block, -(-hi // block))]
    return torch.cat(pieces, -1)[..., lo % block:lo % block + hi - lo]
