"""Stereo out of a mono model: the model hears and writes one channel, the mid
M = (L + R) / 2; the output's stereo image is rebuilt from the source's, band by band.

In each frequency band and moment the source's side S = (L - R) / 2 is split into the
part that follows the mid (panning: a M, a real) and the rest (width: reverb, spaced
microphones), whose level relative to the mid is b. The output's side copies both:

    S' = a M' + b D(M'),   L' = M' + S',   R' = M' - S'

with D a short delay (a decorrelated copy of M'). L' + R' = 2 M' exactly, so the mono
sum is the model's output with no comb filtering, whatever a and b are; and the L/R
correlation of each band, (1 - a^2 - b^2) / (1 + a^2 + b^2), is the source's.

    source (N, 2), mid' (N,) at sr -> a, b (bands, frames) -> output (N, 2)
"""
import math

import numpy as np
import torch

from stft import hann_window, istft, stft

FRAME_SECONDS = 0.046    # STFT window (2048 samples at 44.1 kHz)
BANDS = 32               # log-spaced bands from 50 Hz to Nyquist
SMOOTH_SECONDS = 0.25    # the image is measured over this much time
DELAY_SECONDS = 0.012    # D: the decorrelating delay (below the echo threshold)
MAX_SIDE = 1.0           # |a| and b at most this: where the mid vanishes the ratio does not


def _params(sr):
    n_fft = 2 ** round(math.log2(FRAME_SECONDS * sr))
    return n_fft, n_fft // 4


def band_matrix(sr, n_fft, bands=BANDS, fmin=50.0):
    """(bands, F) 0/1 matrix: which STFT bins each band holds (the lowest band holds
    everything below fmin, the highest up to Nyquist)."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    edges = np.geomspace(fmin, sr / 2, bands + 1)
    index = np.clip(np.searchsorted(edges, freqs, side="right") - 1, 0, bands - 1)
    return torch.from_numpy(np.eye(bands, dtype=np.float32)[:, index])


def _smooth(x, frames):
    """Moving average over the last axis (frames wide, edges renormalised)."""
    k = torch.ones(1, 1, frames, dtype=x.dtype) / frames
    flat = x.reshape(-1, 1, x.shape[-1])
    num = torch.nn.functional.conv1d(flat, k, padding=frames // 2)[..., :x.shape[-1]]
    den = torch.nn.functional.conv1d(torch.ones_like(flat[:1]), k,
                                     padding=frames // 2)[..., :x.shape[-1]]
    return (num / den).reshape(x.shape)


def _frames_first(X):
    """An STFT (F, T) as real (T, F, 2): the layout stft() computes it in (a view, no copy),
    where the arithmetic runs on contiguous memory."""
    return torch.view_as_real(X.T)


def image(source, sr):
    """Source (N, 2) -> (a, b), each (bands, frames): the panning and the width of every
    band, relative to the mid (see the module docstring)."""
    n_fft, hop = _params(sr)
    window = hann_window(n_fft)
    x = torch.from_numpy(np.asarray(source, dtype=np.float32))
    M = stft((x[:, 0] + x[:, 1]) / 2, n_fft, hop, window=window)      # (F, T)
    S = stft((x[:, 0] - x[:, 1]) / 2, n_fft, hop, window=window)
    bands = band_matrix(sr, n_fft)                                   # (bands, F)
    frames = max(1, round(SMOOTH_SECONDS * sr / hop))
    M, S = (_frames_first(X) for X in (M, S))                        # (T, F, 2): re, im
    mm = _smooth((M.square().sum(-1) @ bands.T).T, frames)           # |M|^2 (bands, T)
    sm = _smooth(((S * M).sum(-1) @ bands.T).T, frames)              # Re(S M*)
    ss = _smooth((S.square().sum(-1) @ bands.T).T, frames)           # |S|^2
    eps = 1e-12 + 1e-9 * mm.max()
    a = sm / (mm + eps)
    b = ((ss - a * sm).clamp(min=0) / (mm + eps)).sqrt()             # residual side / mid
    return a.clamp(-MAX_SIDE, MAX_SIDE), b.clamp(max=MAX_SIDE)


def widen(mid, source, sr):
    """The model's mono output mid (N,) given the source's stereo image: -> (N, 2), whose
    channels average to mid exactly. source (N, 2) is the input the mid was made from."""
    n_fft, hop = _params(sr)
    a, b = image(source, sr)
    window = hann_window(n_fft)
    m = torch.from_numpy(np.asarray(mid, dtype=np.float32))
    delay = min(round(DELAY_SECONDS * sr), len(m))
    d = torch.cat([m.new_zeros(delay), m[:len(m) - delay]])
    M, D = (stft(v, n_fft, hop, window=window) for v in (m, d))       # (F, T)
    bands = band_matrix(sr, n_fft)                                   # (bands, F)
    S = torch.addcmul((a.T @ bands)[..., None] * _frames_first(M), (b.T @ bands)[..., None],
                      _frames_first(D))                              # (T, F, 2)
    S = torch.view_as_complex(S).T                                   # (F, T)
    side = istft(S, n_fft, hop, window=window, length=len(m))
    return torch.stack([m + side, m - side], 1).numpy()


def correlation(stereo):
    """The L/R correlation coefficient of a (N, 2) signal (1: mono, 0: unrelated)."""
    left, right = (np.asarray(stereo[:, i], dtype=np.float64) for i in (0, 1))
    return float((left * right).sum() / math.sqrt((left ** 2).sum() * (right ** 2).sum() + 1e-30))
