"""The signal front end: STFT, mel scale, log-mel spectrogram and Griffin-Lim, by hand.

The paper (Sec. 3) works on log-mel spectrograms of the STFT and returns to audio with a
vocoder; Griffin-Lim (Griffin & Lim 1984, fast variant of Perraudin et al. 2013) is the
classical baseline vocoder. Everything is plain torch: batch-first (any leading dims),
on the input's device and dtype, and differentiable.

    wave (B, N) -stft-> X (B, F, T) complex, F = n_fft//2 + 1, T = 1 + N//hop
    |X| -mel fb, log, fixed norm-> spec (B, 1, n_mels, T) -pinv, griffin_lim-> wave (B, N)
"""
import math

import torch
import torch.nn.functional as F


def hann_window(n, periodic=True, device=None, dtype=None):
    """w[k] = 0.5 - 0.5 cos(2 pi k / L), L = n (periodic, for spectra) or n - 1 (symmetric)."""
    if n == 1:
        return torch.ones(1, device=device, dtype=dtype)
    k = torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype())
    L = n if periodic else n - 1
    return 0.5 - 0.5 * torch.cos(2 * math.pi * k / L)  # (n,)


def _window(n_fft, win_length, like):
    """Hann of win_length, zero-padded centrally to n_fft (torch.stft's convention)."""
    win_length = win_length or n_fft
    assert win_length <= n_fft, "win_length must not exceed n_fft"
    w = hann_window(win_length, device=like.device, dtype=like.real.dtype)
    left = (n_fft - win_length) // 2
    return F.pad(w, (left, n_fft - win_length - left))  # (n_fft,)


def _reflect_pad(x, p):
    """Mirror p samples at each end without repeating the edge sample (numpy 'reflect')."""
    assert x.shape[-1] > p, f"signal of {x.shape[-1]} samples is too short to pad by {p}"
    return torch.cat([x[..., 1:p + 1].flip(-1), x, x[..., -p - 1:-1].flip(-1)], dim=-1)


def stft(x, n_fft, hop, win_length=None, center=True, window=None):
    """Unscaled STFT: X[f, t] = sum_n w[n] x[t hop + n] exp(-2 pi i f n / n_fft).

    x: (..., N) real. Returns (..., n_fft//2 + 1, frames) complex,
    frames = 1 + (N_pad - n_fft) // hop (= 1 + N // hop when centred, n_fft even).
    `window` may pass a precomputed (n_fft,) window (e.g. a module's buffer).
    """
    window = _window(n_fft, win_length, x) if window is None else window.to(x)
    if center:  # frame t is then centred on sample t * hop
        x = _reflect_pad(x, n_fft // 2)                   # (..., N + 2 (n_fft//2))
    frames = x.unfold(-1, n_fft, hop)                     # (..., T, n_fft)
    X = torch.fft.rfft(frames * window, n=n_fft, dim=-1)  # (..., T, F)
    return X.transpose(-1, -2)                            # (..., F, T)


def istft(X, n_fft, hop, win_length=None, center=True, length=None, window=None):
    """Inverse STFT by weighted overlap-add: the least-squares signal (Griffin & Lim 1984).

    X: (..., F, T) complex. Returns (..., N) real, N = length, or when centred hop (T - 1)
    (+1 for odd n_fft): the signal up to the last frame's centre.
    """
    if window is None:
        window = _window(n_fft, win_length, X)
    window = window.to(device=X.device, dtype=X.real.dtype)
    lead, T = X.shape[:-2], X.shape[-1]
    frames = torch.fft.irfft(X.transpose(-1, -2), n=n_fft, dim=-1) * window  # (..., T, n_fft)
    n_padded = n_fft + hop * (T - 1)
    y = overlap_add(frames.reshape(-1, T, n_fft), hop).reshape(*lead, n_padded)
    envelope = window_envelope(window, hop, T)                          # (n_padded,)
    # Where no window reaches (edges of an uncentred STFT) there is nothing to undo.
    tiny = torch.finfo(envelope.dtype).tiny
    y = y / torch.where(envelope > tiny, envelope, torch.ones_like(envelope))

    start = n_fft // 2 if center else 0
    if length is None:
        return y[..., start:n_padded - start]
    y = y[..., start:start + length]
    return F.pad(y, (0, length - y.shape[-1]))  # zero-pad if the frames ran short


def overlap_add(frames, hop):
    """(B, T, n) frames -> (B, n + hop (T - 1)): frame t added in at sample t hop.

    When hop divides n (every setting here), the output is T + n / hop - 1 blocks of hop
    samples and block j sums part k of frame j - k: n / hop strided adds, several times
    faster than F.fold, which serves any other hop."""
    B, T, n = frames.shape
    if n % hop:
        y = F.fold(frames.transpose(1, 2), output_size=(1, n + hop * (T - 1)),
                   kernel_size=(1, n), stride=(1, hop))                   # (B, 1, 1, N)
        return y.reshape(B, -1)
    r = n // hop
    parts = frames.reshape(B, T, r, hop)
    y = frames.new_zeros(B, T + r - 1, hop)
    for k in range(r):
        y[:, k:k + T] += parts[:, :, k]
    return y.reshape(B, -1)


def window_envelope(window, hop, T):
    """sum_t window[n - t hop]^2 over T frames: the overlap-add of T squared windows, which
    istft divides by. When hop divides n, block j of hop samples is the sum of the
    squared window's parts k <= j (the first n / hop - 1 blocks), of all parts (the middle)
    or of parts k >= j - T + 1 (the last n / hop - 1): no (T, n) frames to add up."""
    n = window.shape[-1]
    w2 = window ** 2
    r = n // hop
    if n % hop or T < r:
        return overlap_add(w2.expand(1, T, n), hop)[0]
    parts = w2.reshape(r, hop)
    head = parts.cumsum(0)                                   # head[j] = sum of parts 0..j
    tail = parts.flip(0).cumsum(0).flip(0)                   # tail[k] = sum of parts k..r-1
    middle = head[-1].expand(T - r + 1, hop)
    return torch.cat([head[:-1], middle, tail[1:]]).reshape(-1)   # (n + hop (T - 1),)


# ---------------------------------------------------------------- mel scale
# Slaney's Auditory Toolbox mel: linear (200/3 Hz per mel) below 1 kHz, log above, so
# 1000 Hz = 15 mel and every 27 mel is a factor 6.4 in frequency (librosa's default).
_F_SP, _MIN_LOG_HZ, _MIN_LOG_MEL, _LOGSTEP = 200.0 / 3, 1000.0, 15.0, math.log(6.4) / 27.0


def hz_to_mel(f, htk=False):
    """Hz (number or array) -> mel, as a float64 tensor; HTK: 2595 log10(1 + f / 700)."""
    f = torch.as_tensor(f, dtype=torch.float64)
    if htk:
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    log_part = _MIN_LOG_MEL + torch.log(f.clamp(min=_MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return torch.where(f >= _MIN_LOG_HZ, log_part, f / _F_SP)


def mel_to_hz(m, htk=False):
    m = torch.as_tensor(m, dtype=torch.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    log_part = _MIN_LOG_HZ * torch.exp(_LOGSTEP * (m.clamp(min=_MIN_LOG_MEL) - _MIN_LOG_MEL))
    return torch.where(m >= _MIN_LOG_MEL, log_part, m * _F_SP)


def mel_filterbank(sr, n_fft, n_mels, fmin=0.0, fmax=None, htk=False):
    """Triangular filters, centres equally spaced in mel, each of unit area (Slaney norm).

    Filter m rises from f[m] to 1 at f[m+1] and falls to 0 at f[m+2]; scaling by
    2 / (f[m+2] - f[m]) gives every triangle area 1, so wide high bands are not louder.
    Returns (n_mels, n_fft//2 + 1) float32, like librosa.filters.mel(norm='slaney').
    """
    fmax = sr / 2 if fmax is None else fmax
    fft_freqs = torch.linspace(0, sr / 2, n_fft // 2 + 1, dtype=torch.float64)   # (F,)
    mel_pts = torch.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2,
                             dtype=torch.float64)
    f_pts = mel_to_hz(mel_pts, htk)                                               # (n_mels + 2,)
    f_lo, f_c, f_hi = f_pts[:-2, None], f_pts[1:-1, None], f_pts[2:, None]        # (n_mels, 1)
    rising = (fft_freqs - f_lo) / (f_c - f_lo)                                    # (n_mels, F)
    falling = (f_hi - fft_freqs) / (f_hi - f_c)
    triangles = torch.minimum(rising, falling).clamp(min=0)
    return (triangles * 2.0 / (f_hi - f_lo)).float()


class LogMel(torch.nn.Module):
    """wave (B, N) -> normalised log-mel (B, 1, n_mels, T), and back through Griffin-Lim.

    The normalisation (log_mel - norm_mean) / norm_std is fixed and global, never per clip,
    so a quiet clip stays quiet after a round trip through the models.
    """

    def __init__(self, sample_rate=16000, n_fft=1024, hop=256, n_mels=128, fmin=0.0,
                 fmax=None, log_floor=1e-5, norm_mean=-5.0, norm_std=2.5):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.log_floor, self.norm_mean, self.norm_std = log_floor, norm_mean, norm_std
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
        # Non-persistent: derived from the arguments, so they follow .to() but stay out of
        # checkpoints.
        self.register_buffer("mel_fb", fb, persistent=False)                  # (n_mels, F)
        self.register_buffer("window", hann_window(n_fft), persistent=False)  # (n_fft,)
        self._pinv = None

    @property
    def mel_pinv(self):
        """(F, n_mels): the filterbank's pseudo-inverse, made on first use (only Griffin-Lim
        needs it), from its SVD: torch.linalg.pinv takes seconds on a CPU, this 0.1 s."""
        fb = self.mel_fb
        if self._pinv is None or (self._pinv.device, self._pinv.dtype) != (fb.device, fb.dtype):
            U, S, Vh = torch.linalg.svd(fb.double().cpu(), full_matrices=False)
            keep = S > S.max() * max(fb.shape) * torch.finfo(torch.float64).eps
            self._pinv = ((Vh[keep].T / S[keep]) @ U[:, keep].T).to(fb)
        return self._pinv

    def forward(self, wave):
        magnitude = stft(wave, self.n_fft, self.hop, window=self.window).abs()  # (B, F, T)
        mel = self.mel_fb @ magnitude                                            # (B, n_mels, T)
        log_mel = torch.log(mel.clamp(min=self.log_floor))
        spec = (log_mel - self.norm_mean) / self.norm_std
        return spec.unsqueeze(-3)                                               # (B, 1, n_mels, T)

    def mel_to_magnitude(self, spec):
        """Least-squares linear magnitude whose mel projection is the spectrogram's."""
        mel = torch.exp(spec.squeeze(-3) * self.norm_std + self.norm_mean)  # (B, n_mels, T)
        return (self.mel_pinv @ mel).clamp(min=0)                           # (B, F, T)

    def inverse(self, spec, n_iter=64, length=None, generator=None):
        """spec (B, 1, n_mels, T) -> wave (B, N) by Griffin-Lim on the pseudo-inverted mel."""
        magnitude = self.mel_to_magnitude(spec)                              # (B, F, T)
        return griffin_lim(magnitude, self.n_fft, self.hop, n_iter=n_iter, length=length,
                           window=self.window, generator=generator)


def griffin_lim(magnitude, n_fft, hop, n_iter=64, momentum=0.99, win_length=None,
                length=None, generator=None, window=None, phase=None):
    """Fast Griffin-Lim (Perraudin, Balazs & Sondergaard 2013), as in librosa.griffinlim.

    Alternates projections: impose the magnitude, go to a waveform and back to a consistent
    STFT; the momentum term extrapolates from the previous estimate, which converges much
    faster than the plain algorithm (momentum=0).
    magnitude: (B, F, T) or (F, T), real >= 0. Returns (B, N) or (N,). `generator` draws the
    initial phase, or `phase` (magnitude's shape, turns in [0, 1)) gives it; `window` may
    pass a precomputed (n_fft,) window.
    """
    if window is None:  # built once, not on every iteration
        window = _window(n_fft, win_length, magnitude)
    if phase is None:
        phase = torch.rand(magnitude.shape, generator=generator, device=magnitude.device,
                           dtype=magnitude.dtype)
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * phase)  # (..., F, T), |.| = 1
    rebuilt = torch.zeros_like(angles)
    eps = torch.finfo(magnitude.dtype).tiny
    for _ in range(n_iter):
        previous = rebuilt
        wave = istft(magnitude * angles, n_fft, hop, length=length, window=window)
        rebuilt = stft(wave, n_fft, hop, window=window)
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles = angles / (angles.abs() + eps)
    return istft(magnitude * angles, n_fft, hop, length=length, window=window)


def spectral_convergence(magnitude_ref, magnitude_est, eps=1e-5):
    """||ref - est||_F / ||ref||_F over the last two dims (F, T); lower is better."""
    dims = (-2, -1)
    return (torch.linalg.norm(magnitude_ref - magnitude_est, dim=dims)
            / torch.linalg.norm(magnitude_ref, dim=dims).clamp_min(eps))


def mrstft_distance(wave_ref, wave_est, resolutions=((512, 128), (1024, 256), (2048, 512)),
                    eps=1e-5):
    """Multi-resolution STFT distance (B,): spectral convergence + log-magnitude L1,
    averaged over resolutions (Yamamoto et al. 2020, Parallel WaveGAN)."""
    n = min(wave_ref.shape[-1], wave_est.shape[-1])
    wave_ref, wave_est = wave_ref[..., :n], wave_est[..., :n]
    total = 0.0
    for n_fft, hop in resolutions:
        ref, est = stft(wave_ref, n_fft, hop).abs(), stft(wave_est, n_fft, hop).abs()
        sc = spectral_convergence(ref, est, eps)
        log_mag = (ref.clamp_min(eps).log() - est.clamp_min(eps).log()).abs().mean(dim=(-2, -1))
        total = total + sc + log_mag
    return total / len(resolutions)
