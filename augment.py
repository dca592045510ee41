"""A random recording chain, so that models trained on clean renders meet recordings.

Real music reaches the project through rooms, microphones, mixing desks and lossy codecs.
Each clip of a training batch goes through its own draw of that chain, applied in the
order a recording meets it (all in float32 on the clip's device, batched):

    wave (B, N) -> dense (a second, quieter piece mixed in) -> reverb (a synthetic room)
                -> EQ tilt and band limits (a microphone, a codec) -> compression and a
                soft limiter (mastering) -> noise -> gain -> wave (B, N)

Every stage is a few lines of plain signal processing; filters are applied in the
frequency domain (one real FFT per clip), reverb as a linear convolution by FFT.

    Chain()(wave, generator=None) -> wave, same shape; Chain(p=0) is the identity
"""
import math
from dataclasses import dataclass

import torch


@dataclass
class Chain:
    """Chances (p_*) and ranges of each stage; `p` scales every chance (0: off)."""
    sample_rate: int = 16000
    p: float = 1.0
    p_dense: float = 0.3
    dense_db: tuple = (-20.0, -8.0)      # level of the second piece against the first
    p_reverb: float = 0.5
    rt60: tuple = (0.2, 2.0)             # seconds for the room's tail to fall 60 dB
    wet: tuple = (0.1, 0.6)              # share of reverberant sound in the mix
    p_tilt: float = 0.6
    tilt_db: tuple = (-3.0, 3.0)         # gain per octave away from 1 kHz
    p_lowpass: float = 0.4
    cutoff_hz: tuple = (3000.0, 7500.0)  # a codec's or a microphone's band edge
    p_highpass: float = 0.3
    highpass_hz: tuple = (40.0, 200.0)
    p_compress: float = 0.5
    threshold_db: tuple = (-30.0, -10.0)  # against the clip's peak
    ratio: tuple = (2.0, 8.0)
    p_limit: float = 0.3
    drive_db: tuple = (0.0, 9.0)         # into a tanh soft clipper
    p_noise: float = 0.4
    snr_db: tuple = (15.0, 45.0)
    gain_db: float = 6.0                 # always: loudness is not style

    def __call__(self, wave, generator=None):
        """(B, N) float -> (B, N): each row its own random recording chain."""
        assert wave.dim() == 2, "wave must be (B, N)"
        if self.p <= 0:
            return wave
        wave = wave.float()
        draw = _Draws(len(wave), wave.device, generator)

        def on(p):                                                   # (B,) bool
            return draw.chance(p * self.p)

        wave = dense(wave, on(self.p_dense), draw.uniform(*self.dense_db), draw.roll())
        wave = reverb(wave, on(self.p_reverb), draw.uniform(*self.rt60), draw.uniform(*self.wet),
                      self.sample_rate, draw.normal(wave.shape[1]))
        wave = equalize(wave, self.sample_rate,
                        tilt_db=torch.where(on(self.p_tilt), draw.uniform(*self.tilt_db), 0.0),
                        lowpass=torch.where(on(self.p_lowpass), draw.uniform(*self.cutoff_hz),
                                            math.inf),
                        highpass=torch.where(on(self.p_highpass),
                                             draw.uniform(*self.highpass_hz), 0.0))
        wave = compress(wave, on(self.p_compress), draw.uniform(*self.threshold_db),
                        draw.uniform(*self.ratio), self.sample_rate)
        wave = limit(wave, on(self.p_limit), draw.uniform(*self.drive_db))
        wave = add_noise(wave, on(self.p_noise), draw.uniform(*self.snr_db),
                         draw.normal(wave.shape[1]))
        gain_db = draw.uniform(-self.gain_db, self.gain_db)
        return wave * 10 ** (gain_db[:, None] / 20)


class _Draws:
    """Random numbers for a batch, all from one generator (a seeded chain repeats)."""

    def __init__(self, batch, device, generator):
        self.batch, self.device, self.generator = batch, device, generator

    def uniform(self, lo, hi):
        u = torch.rand(self.batch, generator=self.generator)
        return (lo + (hi - lo) * u).to(self.device)

    def chance(self, p):
        return (torch.rand(self.batch, generator=self.generator) < p).to(self.device)

    def normal(self, n):
        return torch.randn(self.batch, n, generator=self.generator).to(self.device)

    def roll(self):
        """For each clip, another clip of the batch (itself only when the batch is one)."""
        shift = int(torch.randint(1, max(2, self.batch), (), generator=self.generator))
        return (torch.arange(self.batch) + shift) % self.batch


def _rms(x):
    return x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-8)


def dense(wave, on, level_db, partner):
    """Mix clip partner[b] under clip b at level_db (relative RMS): a denser source."""
    other = wave[partner.to(wave.device)]
    scale = _rms(wave) / _rms(other) * 10 ** (level_db[:, None] / 20)
    return torch.where(on[:, None], wave + scale * other, wave)


def room_impulse(rt60, sample_rate, noise):
    """Synthetic room tails (B, L): noise decaying by 60 dB in rt60 seconds (the exponential
    decay of a diffuse field, Sabine / Schroeder), of unit energy."""
    t = torch.arange(noise.shape[1], device=noise.device) / sample_rate
    tail = noise * torch.exp(-6.91 * t / rt60[:, None])              # ln(1000) = 6.91
    tail = tail / tail.pow(2).sum(-1, keepdim=True).sqrt().clamp_min(1e-8)
    return tail


def fft_convolve(x, h):
    """Linear convolution of each row of x (B, N) with h (B, L), cut to N samples."""
    n = x.shape[1] + h.shape[1] - 1
    y = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(h, n), n)
    return y[:, :x.shape[1]]


def reverb(wave, on, rt60, wet, sample_rate, noise):
    """A room: the dry clip mixed with its convolution by a decaying-noise tail; same RMS."""
    length = min(noise.shape[1], int(2.5 * float(rt60.max()) * sample_rate) + 1)
    tail = room_impulse(rt60, sample_rate, noise[:, :length])
    wet_sound = fft_convolve(wave, tail)
    wet_sound = wet_sound * _rms(wave) / _rms(wet_sound)
    mixed = (1 - wet[:, None]) * wave + wet[:, None] * wet_sound
    mixed = mixed * _rms(wave) / _rms(mixed)
    return torch.where(on[:, None], mixed, wave)


def equalize(wave, sample_rate, tilt_db, lowpass, highpass):
    """Per clip: a spectral tilt of tilt_db per octave around 1 kHz, and band limits
    (8th-order Butterworth magnitudes, steep as a codec's; lowpass inf, highpass 0: off)."""
    n = wave.shape[1]
    f = torch.fft.rfftfreq(n, 1 / sample_rate).to(wave.device)[None]        # (1, n/2 + 1)
    octaves = torch.log2(f.clamp_min(20.0) / 1000.0)
    gain = 10 ** (tilt_db[:, None] * octaves / 20)
    gain = gain / (1 + (f / lowpass[:, None]) ** 16).sqrt()
    gain = gain / (1 + (highpass[:, None] / f.clamp_min(1e-3)) ** 16).sqrt()
    return torch.fft.irfft(torch.fft.rfft(wave) * gain, n)


def compress(wave, on, threshold_db, ratio, sample_rate, frame=0.01):
    """A feed-forward compressor on 10 ms RMS frames: above threshold (dB below the clip's
    peak) the level rises 1/ratio as fast; the gain is smoothed and made up to the peak."""
    hop = max(1, int(frame * sample_rate))
    b, n = wave.shape
    pad = (-n) % hop
    frames = torch.nn.functional.pad(wave, (0, pad)).view(b, -1, hop)
    level = 20 * torch.log10(frames.pow(2).mean(-1).sqrt().clamp_min(1e-6))   # (B, frames)
    peak = level.amax(-1, keepdim=True)
    over = (level - (peak + threshold_db[:, None])).clamp_min(0)
    gain_db = -over * (1 - 1 / ratio[:, None])
    gain_db = torch.nn.functional.avg_pool1d(gain_db[:, None], 5, 1, 2,
                                             count_include_pad=False)[:, 0]   # 50 ms smoothing
    gain = 10 ** (gain_db / 20)
    gain = torch.nn.functional.interpolate(gain[:, None], size=n + pad, mode="linear",
                                           align_corners=False)[:, 0, :n]
    out = wave * gain
    out = out * _rms(wave) / _rms(out)                # make-up gain: the same loudness
    return torch.where(on[:, None], out, wave)


def limit(wave, on, drive_db):
    """A soft limiter: tanh of the clip scaled so its peak sits drive_db above tanh's knee
    (1); louder drives flatten more of the loud passages."""
    peak = wave.abs().amax(-1, keepdim=True).clamp_min(1e-6)
    drive = 10 ** (drive_db[:, None] / 20) / peak
    out = torch.tanh(wave * drive) / drive
    return torch.where(on[:, None], out, wave)


def add_noise(wave, on, snr_db, noise):
    """Pink-ish noise (white, tilted -3 dB per octave) at snr_db below the clip's RMS."""
    n = wave.shape[1]
    f = torch.fft.rfftfreq(n).to(wave.device).clamp_min(1.0 / n)
    pink = torch.fft.irfft(torch.fft.rfft(noise) / f.sqrt(), n)
    pink = pink * _rms(wave) / _rms(pink) * 10 ** (-snr_db[:, None] / 20)
    return torch.where(on[:, None], wave + pink, wave)
