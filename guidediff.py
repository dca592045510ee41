"""GuideDiff: the paper's fast diffusion decoder from spectrogram to waveform (Sec. 3.3).

A guide encoder turns the normalised log-mel into guide features at frame rate; a
diffusion decoder denoises the WAVEFORM under that guide. The forward process is the
usual one, x_s = sqrt(1 - s^2) x0 + s eps, with a continuous noise level s in (0, 1]
(WaveGrad's trick, Chen et al. 2021: one trained model serves any inference schedule).

Sample-rate networks (DiffWave's 30 dilated layers over every sample) are too slow on a
CPU, so the denoiser works at frame rate, as Vocos does (Siuzdak 2023): it reads the
hand-written STFT of the noisy waveform, runs ConvNeXt blocks over frames, predicts the
clean STFT as log-magnitude and phase, and returns to samples with the exact inverse STFT
(weighted overlap-add, so there is no frame edge to click at). It predicts x0, trained with
spectral losses on that prediction; the sampler turns x0 into eps for DDIM updates.

The guide enters every block by FiLM: per frame, the guide (plus the noise-level
embedding) scales and shifts the normalised activations. The paper says cross-attention;
for a vocoder the guide frame that matters is the one at the same time, which FiLM reads
directly, where attention over all frames costs O(T^2) to learn the same alignment.

    spec (B, 1, n_mels, T) -guide-> g (B, T, D)
    x_s (B, N) -stft-> (B, 3 F, T) -blocks(g, s)-> log|X| (prior + correction), phase
        -istft-> x0 (B, N)
    sampling: s_1 = 1 > s_2 > ... > s_K (a few steps), x0 -> eps -> ddim_update
"""
import math
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from diffusion import ddim_update
from stft import LogMel, istft, mrstft_distance, stft
from unet import timestep_embedding


class ConvNeXtBlock(nn.Module):
    """Depthwise conv over time, LayerNorm, FiLM from a per-frame condition, pointwise MLP,
    scaled residual (ConvNeXt, Liu et al. 2022; as in Vocos). x: (B, T, D) channels-last."""

    def __init__(self, dim, hidden, cond_dim=None, layer_scale=0.1):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=cond_dim is None)
        self.film = nn.Linear(cond_dim, 2 * dim) if cond_dim else None
        if self.film is not None:            # start as plain LayerNorm
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x, cond=None):
        h = self.norm(self.dwconv(x.transpose(1, 2)).transpose(1, 2))      # (B, T, D)
        if self.film is not None:
            scale, shift = self.film(cond).chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        return x + self.gamma * self.mlp(h)


class GuideDiff(nn.Module):
    """Guide encoder + frame-rate diffusion decoder over the waveform.

    n_fft and hop are the log-mel's (from the config), so the decoder's STFT frames are
    the guide's frames one for one. `schedules` maps a step count K to its K noise levels
    (decreasing, the first 1.0 = pure noise); the search in train.py fills it."""

    def __init__(self, logmel, dim=256, hidden=768, layers=6, guide_layers=2, emb_dim=128,
                 head_hidden=0):
        super().__init__()
        self.logmel = logmel                       # stft.LogMel: the spectrogram's settings
        self.n_fft, self.hop, self.emb_dim = logmel.n_fft, logmel.hop, emb_dim
        bins, n_mels = self.n_fft // 2 + 1, logmel.mel_fb.shape[0]
        self.guide_in = nn.Conv1d(n_mels, dim, 7, padding=3)
        self.guide_blocks = nn.ModuleList([ConvNeXtBlock(dim, hidden) for _ in range(guide_layers)])
        self.guide_norm = nn.LayerNorm(dim)
        self.noise_embed = nn.Sequential(nn.Linear(emb_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.wave_in = nn.Linear(3 * bins, dim)
        self.blocks = nn.ModuleList([ConvNeXtBlock(dim, hidden, cond_dim=dim)
                                     for _ in range(layers)])
        self.out_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2 * bins)            # log|X| correction, phase
        nn.init.zeros_(self.head.weight[:bins])         # start at the prior magnitude
        nn.init.zeros_(self.head.bias)
        # A linear head makes every frame's log-spectrum a mix of `dim` fixed shapes; the
        # harmonic combs of several notes at once are not. An MLP beside it (zero at start,
        # so a trained linear-head model grows into it unchanged) lifts that limit.
        self.head_mlp = None
        if head_hidden:
            self.head_mlp = nn.Sequential(nn.Linear(dim, head_hidden), nn.GELU(),
                                          nn.Linear(head_hidden, 2 * bins))
            nn.init.zeros_(self.head_mlp[-1].weight)
            nn.init.zeros_(self.head_mlp[-1].bias)
        self.schedules = {}           # filled by the search in train.py, or from_checkpoint
        self.default_steps, self.searched = 1, False
        self.projections = 0          # mel_projection rounds after sampling (vocode) ...
        self.projection_momentum = 0.9  # ... and their momentum

    def guide(self, spec):
        """spec (B, 1, n_mels, T) normalised log-mel -> (guide features (B, T, D), the
        log-magnitude prior (B, F, T)). The prior is the least-squares magnitude under the
        mel filterbank (Griffin-Lim's starting point; FreeV, Lv et al. 2024): the decoder
        only corrects it, which it learns far faster than the whole magnitude."""
        g = self.guide_in(spec[:, 0]).transpose(1, 2)                       # (B, T, D)
        for block in self.guide_blocks:
            g = block(g)
        prior = torch.log(self.logmel.mel_to_magnitude(spec.float()).clamp_min(1e-5))
        return self.guide_norm(g), prior

    def denoise(self, x_s, guide, noise_level):
        """x0_pred from the noisy waveform x_s (B, N), guide (from .guide), noise level s (B,)."""
        guide, prior = guide
        X = stft(x_s, self.n_fft, self.hop, window=self.logmel.window)      # (B, F, T) complex
        T = min(X.shape[-1], guide.shape[1])
        X, guide, prior = X[..., :T], guide[:, :T], prior[..., :T]
        mag = X.abs()
        features = torch.cat([torch.log(mag + 1e-5), X.real / (mag + 1e-5),
                              X.imag / (mag + 1e-5)], dim=1)                # (B, 3 F, T)
        h = self.wave_in(features.transpose(1, 2))                          # (B, T, D)
        emb = self.noise_embed(timestep_embedding(1000 * noise_level, self.emb_dim))
        cond = F.silu(guide + emb[:, None])                                 # (B, T, D)
        for block in self.blocks:
            h = block(h, cond)
        h = self.out_norm(h)
        out = self.head(h) if self.head_mlp is None else self.head(h) + self.head_mlp(h)
        correction, phase = out.float().transpose(1, 2).chunk(2, dim=1)
        # exp(log|X|) clipped as in Vocos: an early, wild prediction cannot overflow.
        log_mag = (prior + correction).clamp(max=math.log(100.0))
        X0 = torch.polar(log_mag.exp(), phase)                              # (B, F, T)
        return istft(X0, self.n_fft, self.hop, length=x_s.shape[-1], window=self.logmel.window)

    def forward(self, x_s, spec, noise_level):
        return self.denoise(x_s, self.guide(spec), noise_level)

    @torch.no_grad()
    def vocode(self, spec, steps=None, noise_levels=None, eta=0.0, generator=None,
               length=None, projections=None, noise=None):
        """Log-mel (B, 1, n_mels, T) -> waveform (B, N), N = length or hop (T - 1), in
        len(noise_levels) denoiser calls (default: the stored schedule for `steps`), then
        `projections` rounds of mel_projection (default: self.projections). noise: the
        starting noise (B, N) (default: drawn from generator), so that a song vocoded in
        overlapping blocks can share one noise signal."""
        projections = self.projections if projections is None else projections
        if noise_levels is None:
            steps = steps or self.default_steps
            assert steps in self.schedules, f"no stored schedule for {steps} steps; " \
                f"stored: {sorted(self.schedules)}"
            noise_levels = self.schedules[steps]
        B, N = spec.shape[0], length or self.hop * (spec.shape[-1] - 1)
        g = self.guide(spec)
        noise = torch.randn(B, N, generator=generator) if noise is None else noise
        x = noise_levels[0] * noise.to(spec)
        for i, s in enumerate(noise_levels):
            x0 = self.denoise(x, g, torch.full((B,), s, device=spec.device))
            if i == len(noise_levels) - 1:
                return mel_projection(x0.float(), spec.float(), self.logmel, projections,
                                      momentum=self.projection_momentum)
            s_next = noise_levels[i + 1]
            eps = (x - math.sqrt(1 - s * s) * x0) / s            # x_s = sqrt(1 - s^2) x0 + s eps
            noise = torch.randn(B, N, generator=generator).to(spec) if eta > 0 else None
            x = ddim_update(x0, eps, 1 - s * s, 1 - s_next * s_next, eta, noise)


def mel_projection(wave, spec, logmel, rounds, inner=3, momentum=0.9):
    """Make a waveform's mel spectrogram agree with the guide: alternate between the STFTs
    of waveforms (consistent) and the STFTs whose mel projection is the guide's, keeping
    the phase and the fine structure within each band (Griffin-Lim's alternating
    projections, Griffin & Lim 1984, but from GuideDiff's estimate rather than from noise,
    and onto the mel rather than onto one pseudo-inverse magnitude).

    Each round: STFT, pushed on by `momentum` times its change since the last round (fast
    Griffin-Lim's extrapolation, Perraudin et al. 2013: converges in fewer rounds); `inner`
    times scale every bin by the mean, over the mel bands it belongs to, of the band's
    target / current mel ratio; inverse STFT. The gains are real and positive, so scaling
    the complex STFT by them keeps its phase. wave (B, N), spec (B, 1, n_mels, T)
    normalised log-mel -> wave (B, N)."""
    # Frames first, (B, T, F): the STFT's own layout, so the mel sums are plain matmuls
    # and no round copies a transposed spectrogram.
    target = torch.exp(spec[:, 0] * logmel.norm_std + logmel.norm_mean).transpose(1, 2)
    fb = logmel.mel_fb                                                          # (n_mels, F)
    fb_t = fb.T.contiguous()                                                    # (F, n_mels)
    spread = fb.sum(0).clamp_min(1e-8)                                          # (F,)
    previous = None
    for _ in range(rounds):
        consistent = stft(wave, logmel.n_fft, logmel.hop,
                          window=logmel.window).transpose(1, 2)                 # (B, T', F)
        if momentum and previous is not None:   # X = C + m (C - P), in P's storage
            X = previous.mul_(-momentum).add_(consistent, alpha=1 + momentum)
        else:                                   # (X is scaled in place below)
            X = consistent.clone() if momentum else consistent
        previous = consistent
        T = min(X.shape[1], target.shape[1])
        magnitude = X[:, :T].abs()
        gain = None
        for _ in range(inner):
            current = magnitude if gain is None else magnitude * gain
            ratio = target[:, :T] / (current @ fb_t).clamp_min(logmel.log_floor)  # (B, T, mels)
            update = (ratio @ fb) / spread                                      # (B, T, F)
            gain = update if gain is None else gain.mul_(update)
        X[:, :T] *= gain
        wave = istft(X.transpose(1, 2), logmel.n_fft, logmel.hop, length=wave.shape[-1],
                     window=logmel.window)
    return wave


def training_loss(model, wave, spec, logmel, p_pure_noise=0.25, mel_weight=1.0,
                  generator=None, guide=None):
    """Noise the waveform to a random level s, predict x0, and score the prediction with
    the normalised log-mel L1 plus the multi-resolution STFT distance (the metrics the
    evaluation reads; Vocos and Parallel WaveGAN train on the same pair, without a GAN here).

    s ~ U(0, 1], with p_pure_noise of the batch at s = 1: the first step of every schedule
    starts from pure noise, so that level gets its own share of the training. guide: the
    log-mel the model is conditioned on, when it is not the wave's own (an autoencoder
    round trip of it: the spectrograms the vocoder meets in use); the loss is against the
    wave and its own log-mel either way."""
    B, guide = wave.shape[0], spec if guide is None else guide
    s = torch.rand(B, generator=generator).to(wave).clamp_min(1e-3)
    s = torch.where(torch.rand(B, generator=generator).to(wave) < p_pure_noise,
                    torch.ones_like(s), s)
    eps = torch.randn(wave.shape, generator=generator).to(wave)
    x_s = (1 - s * s).sqrt()[:, None] * wave + s[:, None] * eps
    x0_pred = model(x_s, guide, s)
    mel_l1 = (logmel(x0_pred) - spec).abs().mean()
    return mel_weight * mel_l1 + mrstft_distance(wave, x0_pred).mean()


def candidate_schedules(steps):
    """Noise-level schedules of `steps` levels to search over: 1.0, then geometric from
    s_2 down to s_min (the last step only removes a trace of noise)."""
    if steps == 1:
        return [[1.0]]
    out = []
    for s2 in (0.8, 0.5, 0.3):
        for s_min in (0.1, 0.03, 0.01):
            if s_min >= s2:
                continue
            k = steps - 1
            out.append([1.0] + [s2 * (s_min / s2) ** (i / max(k - 1, 1)) for i in range(k)])
    return out


def build(cfg):
    """A GuideDiff for a Config: the STFT and mel settings come from cfg.audio."""
    c = cfg.guidediff
    model = GuideDiff(LogMel(**asdict(cfg.audio)), c.dim, c.hidden, c.layers, c.guide_layers,
                      c.emb_dim, c.head_hidden)
    model.projections, model.projection_momentum = c.projections, c.projection_momentum
    return model


def from_checkpoint(ckpt):
    """The GuideDiff of a loaded guidediff.pt (config.load_checkpoint), with its schedules."""
    cfg = config.config_from_dict(ckpt["config"])
    model = config.load_weights(build(cfg), ckpt, "guidediff")
    model.default_steps = ckpt.get("default_steps", cfg.guidediff.default_steps)
    # A checkpoint saved mid-training has no searched schedules yet: use the one that
    # training validates with.
    model.schedules = {int(k): list(v) for k, v in ckpt.get("schedules", {}).items()} or \
        {model.default_steps: candidate_schedules(model.default_steps)[0]}
    model.searched = "schedules" in ckpt
    return model


class GuideDiffTraining(nn.Module):
    """GuideDiff + the log-mel front end; forward returns the loss (one forward for DDP).

    chain: an augment.Chain for the training waves (it vocodes recordings too); autoencoder:
    a frozen one whose round trips guide c.round_trip of the batch (not trained here)."""

    def __init__(self, model, logmel, c, chain=None, autoencoder=None):
        super().__init__()
        self.model, self.logmel, self.c, self.chain = model, logmel, c, chain
        self.autoencoder = [autoencoder]    # a list: its weights are not this module's

    def forward(self, wave, transfer_guide=None, guided=None):
        """wave (B, N) -> the loss. transfer_guide (B, 1, n_mels, frames) and guided (B,):
        data.GuidedClips' transfer outputs, which guide the clean render they aim at (no
        recording chain on those)."""
        clean = wave
        if self.chain is not None:
            wave = self.chain(wave)
            if guided is not None:
                wave = torch.where(guided[:, None], clean, wave)
        spec, guide = self.logmel(wave), None
        if self.autoencoder[0] is not None and self.c.round_trip > 0:
            with torch.no_grad():
                trip = self.autoencoder[0](spec)[0].float()
            use = (torch.rand(len(wave), device=wave.device) < self.c.round_trip)
            guide = torch.where(use[:, None, None, None], trip, spec)
        if guided is not None:
            guide = torch.where(guided[:, None, None, None], transfer_guide.to(spec),
                                spec if guide is None else guide)
        return training_loss(self.model, wave, spec, self.logmel, self.c.p_pure_noise,
                             self.c.mel_weight, guide=guide)


def score_vocoder(model, specs, waves, logmel, noise_levels, batch=8):
    """(log-mel L1, MR-STFT distance) of GuideDiff's output against the true waves;
    fixed noise, so that schedules and checkpoints compare fairly."""
    generator = torch.Generator().manual_seed(0)
    out = torch.cat([model.vocode(s, noise_levels=noise_levels, generator=generator,
                                  length=w.shape[-1])
                     for s, w in zip(specs.split(batch), waves.split(batch))])
    return ((logmel(out) - specs).abs().mean().item(),
            mrstft_distance(waves, out).mean().item())


def search_schedules(model, specs, waves, logmel, step_counts):
    """The few-step schedules: for each step count, the candidate noise levels with the
    lowest log-mel L1 + MR-STFT on the validation clips (stored in the checkpoint)."""
    found = {}
    for k in step_counts:
        scored = [(sum(score_vocoder(model, specs, waves, logmel, levels)), levels)
                  for levels in candidate_schedules(k)]
        found[k] = min(scored)[1]
    return found
