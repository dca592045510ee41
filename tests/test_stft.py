"""Tests for stft.py against scipy, closed forms and round trips, on seeded random signals."""
import math

import numpy as np
import pytest
import scipy.signal
import torch

from stft import (LogMel, griffin_lim, hann_window, hz_to_mel, istft, mel_filterbank,
                  mel_to_hz, overlap_add, spectral_convergence, stft,
                  window_envelope)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b).max() / np.abs(b).max()


def harmonic_signal(n, sr=16000, f0=220.0, seed=0):
    """A few harmonics under a smooth envelope: music-like, with known structure."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
            for k in range(1, 6))
    envelope = np.exp(-2.0 * t) * (1 - np.exp(-50.0 * t))
    return torch.from_numpy(0.3 * x * envelope)


# ---------------------------------------------------------------- window, STFT, iSTFT
@pytest.mark.parametrize("n", [1, 2, 7, 16, 255, 1024])
@pytest.mark.parametrize("periodic", [True, False])
def test_hann_window_matches_scipy(n, periodic):
    ours = hann_window(n, periodic=periodic, dtype=torch.float64).numpy()
    ref = scipy.signal.get_window("hann", n, fftbins=periodic)
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("N", [1000, 1023, 4097])
@pytest.mark.parametrize("n_fft, hop, win_length", [(256, 64, None), (255, 100, None),
                                                    (512, 128, 400), (64, 16, 33)])
@pytest.mark.parametrize("center", [True, False])
def test_stft_matches_scipy(N, n_fft, hop, win_length, center):
    x = np.random.default_rng(N + n_fft).standard_normal(N)
    ours = stft(torch.from_numpy(x), n_fft, hop, win_length, center=center).numpy()

    win_length = win_length or n_fft
    left = (n_fft - win_length) // 2
    window = np.zeros(n_fft)
    window[left:left + win_length] = scipy.signal.get_window("hann", win_length, fftbins=True)
    x_pad = np.pad(x, n_fft // 2, mode="reflect") if center else x
    _, _, ref = scipy.signal.stft(x_pad, window=window, nperseg=n_fft, noverlap=n_fft - hop,
                                  nfft=n_fft, boundary=None, padded=False,
                                  return_onesided=True, detrend=False)
    ref = ref * window.sum()  # scipy's default scaling='spectrum' divides by sum(window)

    assert ours.shape == ref.shape == (n_fft // 2 + 1, 1 + (len(x_pad) - n_fft) // hop)
    assert rel_err(ours, ref) < 1e-5


@pytest.mark.parametrize("N", [1000, 1023, 4097])
@pytest.mark.parametrize("n_fft, hop, win_length", [(256, 64, None), (255, 64, None),
                                                    (512, 128, 400)])
def test_istft_inverts_stft(N, n_fft, hop, win_length):
    x = torch.randn(2, 3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(N))
    X = stft(x, n_fft, hop, win_length)
    assert X.shape == (2, 3, n_fft // 2 + 1, 1 + (N + 2 * (n_fft // 2) - n_fft) // hop)
    y = istft(X, n_fft, hop, win_length, length=N)
    assert y.shape == x.shape
    assert (y - x).abs().max() < 1e-5
    # Without length the result ends at the last frame centre (one more sample if n_fft is odd).
    y_short = istft(X, n_fft, hop, win_length)
    assert y_short.shape[-1] == hop * (X.shape[-1] - 1) + n_fft % 2
    assert (y_short - x[..., :y_short.shape[-1]]).abs().max() < 1e-5
    # A length beyond the last frame is zero-padded (up to there: x, then its reflection).
    end = n_fft + hop * (X.shape[-1] - 1) - n_fft // 2
    y_long = istft(X, n_fft, hop, win_length, length=end + 100)
    assert (y_long[..., :N] - x).abs().max() < 1e-5 and (y_long[..., end:] == 0).all()


@pytest.mark.parametrize("n, hop", [(16, 4), (16, 16), (15, 4), (12, 5)])
def test_overlap_add_matches_a_loop(n, hop):
    frames = torch.randn(2, 7, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ref = torch.zeros(2, n + hop * 6, dtype=torch.float64)
    for t in range(7):
        ref[:, t * hop:t * hop + n] += frames[:, t]
    assert torch.allclose(overlap_add(frames, hop), ref)


@pytest.mark.parametrize("n, hop", [(16, 4), (16, 16), (15, 4), (12, 5), (16, 8)])
@pytest.mark.parametrize("T", [1, 2, 3, 4, 9])
def test_window_envelope_matches_a_loop(n, hop, T):
    """istft's divisor: the squared windows added at every hop, zeros where none reaches."""
    window = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(T))
    window[:2] = 0                                           # a zero-padded window's edge
    ref = torch.zeros(n + hop * (T - 1), dtype=torch.float64)
    for t in range(T):
        ref[t * hop:t * hop + n] += window ** 2
    ours = window_envelope(window, hop, T)
    assert ours.shape == ref.shape and torch.allclose(ours, ref)
    assert torch.equal(ours == 0, ref == 0)


def test_uncentred_istft_inverts_the_interior():
    x = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = istft(stft(x, 128, 32, center=False), 128, 32, center=False)
    assert torch.isfinite(y).all()
    assert (y[128:800] - x[128:800]).abs().max() < 1e-10


def test_gradcheck_stft_and_istft():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: torch.view_as_real(stft(x, 16, 4)), (x,))
    X = stft(x.detach(), 16, 4)
    X_ri = torch.view_as_real(X).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda X_ri: istft(torch.view_as_complex(X_ri), 16, 4, length=64), (X_ri,))


@pytest.mark.parametrize("dtype, cdtype", [(torch.float32, torch.complex64),
                                           (torch.float64, torch.complex128)])
def test_dtype_follows_input(dtype, cdtype):
    x = torch.randn(3, 500, dtype=dtype)
    X = stft(x, 64, 16)
    assert X.dtype == cdtype and X.device == x.device
    assert istft(X, 64, 16, length=500).dtype == dtype
    assert hann_window(8, dtype=dtype).dtype == dtype
    assert griffin_lim(X.abs(), 64, 16, n_iter=2).dtype == dtype


# ---------------------------------------------------------------- mel scale
def slaney_hz_to_mel(f):  # numpy reference: Slaney's Auditory Toolbox, written out
    f = np.asarray(f, dtype=np.float64)
    log_part = 15 + 27 * np.log(np.maximum(f, 1e-9) / 1000) / np.log(6.4)
    return np.where(f < 1000, f * 3 / 200, log_part)


def test_hz_to_mel_known_values():
    f = np.array([0.0, 200.0, 1000.0, 6400.0, 8000.0, 11025.0])
    np.testing.assert_allclose(hz_to_mel(f).numpy(), slaney_hz_to_mel(f), rtol=1e-12)
    assert hz_to_mel(1000.0).item() == pytest.approx(15.0)
    assert hz_to_mel(6400.0).item() == pytest.approx(15.0 + 27.0)  # 27 mel = a factor 6.4
    np.testing.assert_allclose(hz_to_mel(f, htk=True).numpy(), 2595 * np.log10(1 + f / 700))
    assert hz_to_mel(1000.0, htk=True).item() == pytest.approx(1000.0, abs=0.1)
    for htk in (False, True):
        np.testing.assert_allclose(mel_to_hz(hz_to_mel(f, htk), htk).numpy(), f, atol=1e-9)


@pytest.mark.parametrize("sr, n_fft, n_mels, fmin, fmax, htk", [
    (16000, 1024, 80, 0.0, None, False), (16000, 1024, 64, 50.0, 7000.0, False),
    (22050, 2048, 128, 0.0, 8000.0, False), (16000, 1024, 80, 0.0, None, True)])
def test_mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk):
    fb = mel_filterbank(sr, n_fft, n_mels, fmin, fmax, htk).numpy()
    n_bins = n_fft // 2 + 1
    assert fb.shape == (n_mels, n_bins) and fb.dtype == np.float32
    assert (fb >= 0).all() and (fb.max(axis=1) > 0).all()

    # Band edges from the mel formula alone (numpy), independent of stft.py.
    fmax = sr / 2 if fmax is None else fmax
    to_mel = (lambda f: 2595 * np.log10(1 + f / 700)) if htk else slaney_hz_to_mel
    grid = np.linspace(0, sr / 2 * 1.01, 200001)  # invert the mel map numerically
    mel_pts = np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2)
    f_pts = np.interp(mel_pts, to_mel(grid), grid)
    bin_hz = sr / n_fft

    # Each filter peaks at the FFT bin nearest its centre (ties aside: the two slopes differ).
    centres = f_pts[1:-1] / bin_hz
    clear = np.abs(centres - np.round(centres)) < 0.45
    assert clear.mean() > 0.8
    np.testing.assert_array_equal(fb.argmax(axis=1)[clear], np.round(centres)[clear])
    assert (np.abs(fb.argmax(axis=1) - centres) < 1.0).all()

    # Closed form: height 2 / (f_hi - f_lo) at the centre, linear to 0 at the edges.
    freqs = np.arange(n_bins) * bin_hz
    lo, c, hi = f_pts[:-2, None], f_pts[1:-1, None], f_pts[2:, None]
    tri = np.clip(np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)), 0, None)
    np.testing.assert_allclose(fb, tri * 2 / (hi - lo), rtol=1e-4, atol=1e-7)

    # Slaney normalisation: every triangle has unit area (loosely, for ones several bins wide).
    area = fb.sum(axis=1) * bin_hz
    wide = (f_pts[2:] - f_pts[:-2]) > 8 * bin_hz
    assert wide.any()
    np.testing.assert_allclose(area[wide], 1.0, rtol=0.05)


# ---------------------------------------------------------------- log-mel
def test_logmel_shape_and_buffers():
    lm = LogMel(n_fft=512, hop=128, n_mels=64)
    wave = torch.randn(3, 4000, generator=torch.Generator().manual_seed(0))
    spec = lm(wave)
    assert spec.shape == (3, 1, 64, 1 + 4000 // 128) and spec.dtype == torch.float32
    assert lm.state_dict() == {}  # derived buffers stay out of checkpoints
    lm64 = LogMel(n_fft=512, hop=128, n_mels=64).to(torch.float64)  # buffers follow .to()
    assert lm64(wave.double()).dtype == torch.float64
    assert (lm64(wave.double()).float() - spec).abs().max() < 1e-4


def test_logmel_normalisation_is_fixed():
    """Scaling the wave by g shifts every (unfloored) value by log(g) / norm_std."""
    lm = LogMel(n_fft=512, hop=128, n_mels=64, log_floor=1e-30, norm_mean=-5.0, norm_std=2.5)
    wave = torch.randn(2, 4000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lm = lm.double()
    for g in (0.01, 0.5, 3.0):
        shift = lm(g * wave) - lm(wave)
        assert (shift - math.log(g) / 2.5).abs().max() < 1e-6
    # Silence sits at the floor, (log(floor) - mean) / std, whatever else is in the batch.
    quiet = LogMel(n_fft=512, hop=128, n_mels=64)(torch.zeros(1, 4000))
    assert torch.allclose(quiet, torch.tensor((math.log(1e-5) + 5.0) / 2.5))


@pytest.mark.parametrize("sr, n_fft, n_mels", [(16000, 1024, 128), (22050, 512, 80),
                                                (8000, 256, 96)])
def test_mel_pinv_matches_numpy(sr, n_fft, n_mels):
    """The lazily made pseudo-inverse (from an SVD) is numpy's, in any dtype it follows."""
    lm = LogMel(sr, n_fft, n_fft // 4, n_mels)
    reference = np.linalg.pinv(lm.mel_fb.double().numpy())
    assert lm.mel_pinv.shape == (n_fft // 2 + 1, n_mels) and lm.mel_pinv.dtype == torch.float32
    assert np.abs(lm.mel_pinv.double().numpy() - reference).max() < 1e-5 * np.abs(reference).max()
    lm64 = lm.double()
    assert lm64.mel_pinv.dtype == torch.float64
    np.testing.assert_allclose(lm64.mel_pinv.numpy(), reference, rtol=0,
                               atol=1e-9 * np.abs(reference).max())


def test_mel_to_magnitude_recovers_mel_projection():
    lm = LogMel(n_fft=512, hop=128, n_mels=64).double()
    t = torch.arange(8000, dtype=torch.float64) / 16000
    tones = [(0.5, 220), (0.3, 660), (0.2, 1500)]
    wave = sum(a * torch.sin(2 * math.pi * f * t) for a, f in tones)
    noise = torch.randn(8000, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    wave = (wave + 1e-3 * noise)[None]                                   # (1, N)
    magnitude = stft(wave, 512, 128).abs()                               # (1, F, T)
    recovered = lm.mel_to_magnitude(lm(wave))
    assert recovered.shape == magnitude.shape and (recovered >= 0).all()
    fb = lm.mel_fb
    assert rel_err(fb @ recovered, fb @ magnitude) < 0.05
    assert spectral_convergence(fb @ magnitude, fb @ recovered).max() < 0.05


# ---------------------------------------------------------------- Griffin-Lim
def test_griffin_lim_converges():
    n_fft, hop = 512, 128
    wave = harmonic_signal(8000)                                         # (N,)
    magnitude = stft(wave, n_fft, hop).abs()                             # (F, T)

    def sc(estimate):
        return spectral_convergence(magnitude, stft(estimate, n_fft, hop).abs()).item()

    g = torch.Generator().manual_seed(0)
    phase = 2 * math.pi * torch.rand(magnitude.shape, generator=g, dtype=magnitude.dtype)
    random_phase = sc(istft(torch.polar(magnitude, phase), n_fft, hop, length=8000))
    sc4 = sc(griffin_lim(magnitude, n_fft, hop, n_iter=4, length=8000,
                         generator=torch.Generator().manual_seed(0)))
    sc64 = sc(griffin_lim(magnitude, n_fft, hop, n_iter=64, length=8000,
                          generator=torch.Generator().manual_seed(0)))
    assert sc64 < sc4 < random_phase
    assert sc64 < 0.5 * random_phase
    # The momentum is what makes it fast: plain Griffin-Lim (momentum 0) lags well behind.
    plain64 = sc(griffin_lim(magnitude, n_fft, hop, n_iter=64, momentum=0.0, length=8000,
                             generator=torch.Generator().manual_seed(0)))
    assert sc64 < 0.75 * plain64

    # Batched input gives the batched result; the generator makes it reproducible.
    batched = griffin_lim(magnitude[None].repeat(2, 1, 1), n_fft, hop, n_iter=4, length=8000,
                          generator=torch.Generator().manual_seed(0))
    assert batched.shape == (2, 8000)
    again = griffin_lim(magnitude[None].repeat(2, 1, 1), n_fft, hop, n_iter=4, length=8000,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(batched, again)


def test_logmel_inverse_round_trip():
    lm = LogMel(n_fft=512, hop=128, n_mels=80)
    wave = harmonic_signal(8000).float()[None]                            # (1, N)
    spec = lm(wave)                                                       # (1, 1, 80, T)
    rebuilt = lm.inverse(spec, n_iter=32, length=8000, generator=torch.Generator().manual_seed(0))
    assert rebuilt.shape == wave.shape
    # Loudness survives (fixed normalisation): same RMS, and the loud mel bins agree.
    assert abs(rebuilt.pow(2).mean().sqrt() / wave.pow(2).mean().sqrt() - 1) < 0.1
    loud = spec > spec.max() - 2.0
    assert (lm(rebuilt) - spec)[loud].abs().mean() < 0.1


def test_spectral_convergence():
    ref = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(spectral_convergence(ref, ref), torch.zeros(2))
    assert torch.allclose(spectral_convergence(ref, 0.5 * ref), torch.full((2,), 0.5))
