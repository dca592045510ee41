"""Tests for augment.py: each stage of the recording chain against a measurement of it."""
import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

import augment

SR = 16000


def _tone(freq, seconds=1.0, amp=0.3):
    t = torch.arange(int(SR * seconds)) / SR
    return amp * torch.sin(2 * torch.pi * freq * t)


def _db(x):
    return 20 * torch.log10(x.pow(2).mean().sqrt()).item()


def test_off_is_identity_and_seeded_repeats():
    wave = torch.randn(4, 8000) * 0.1
    assert torch.equal(augment.Chain(p=0)(wave), wave)
    a = augment.Chain()(wave, torch.Generator().manual_seed(3))
    b = augment.Chain()(wave, torch.Generator().manual_seed(3))
    c = augment.Chain()(wave, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert a.shape == wave.shape and torch.isfinite(a).all()
    # Each row has its own chain: with everything on, rows are changed differently.
    all_on = augment.Chain(p=10.0)(wave, torch.Generator().manual_seed(0))
    assert not torch.allclose(all_on, wave, atol=1e-3)


def test_fft_convolve_matches_scipy():
    g = torch.Generator().manual_seed(1)
    x, h = torch.randn(3, 500, generator=g), torch.randn(3, 77, generator=g)
    y = augment.fft_convolve(x, h)
    for b in range(3):
        ref = fftconvolve(x[b].numpy(), h[b].numpy())[:500]
        np.testing.assert_allclose(y[b].numpy(), ref, atol=1e-4)


@pytest.mark.parametrize("rt60", [0.3, 1.2])
def test_room_tail_decays_60_db_in_rt60(rt60):
    """Schroeder backward integration of the tail's energy: -5 to -35 dB fit, times 2."""
    noise = torch.randn(1, int(3 * rt60 * SR), generator=torch.Generator().manual_seed(2))
    h = augment.room_impulse(torch.tensor([rt60]), SR, noise)[0].double()
    edc = torch.flip(torch.cumsum(torch.flip(h ** 2, [0]), 0), [0])
    edc_db = 10 * torch.log10(edc / edc[0])
    t = torch.arange(len(h)) / SR
    keep = (edc_db < -5) & (edc_db > -35)
    slope = np.polyfit(t[keep].numpy(), edc_db[keep].numpy(), 1)[0]      # dB per second
    assert abs(-60 / slope - rt60) < 0.1 * rt60


def test_equalize_band_limits_and_tilt():
    wave = torch.stack([_tone(500), _tone(1000), _tone(2000), _tone(6000)])
    off = torch.full((4,), float("inf")), torch.zeros(4)
    out = augment.equalize(wave, SR, torch.zeros(4), torch.full((4,), 3000.0), off[1])
    assert abs(_db(out[0]) - _db(wave[0])) < 0.5                      # passband
    assert _db(out[3]) < _db(wave[3]) - 30                            # 6 kHz > 3 kHz cut-off
    out = augment.equalize(wave, SR, torch.full((4,), 6.0), *off)
    assert abs((_db(out[2]) - _db(wave[2])) - 6.0) < 0.3              # one octave up: +6 dB
    assert abs((_db(out[0]) - _db(wave[0])) + 6.0) < 0.3              # one octave down: -6 dB
    out = augment.equalize(wave, SR, torch.zeros(4), off[0], torch.full((4,), 2000.0))
    assert _db(out[0]) < _db(wave[0]) - 30 and abs(_db(out[3]) - _db(wave[3])) < 0.5


def test_compress_narrows_dynamics_at_equal_loudness():
    loud_soft = torch.cat([_tone(440, 0.5, 0.5), _tone(440, 0.5, 0.05)])[None]
    out = augment.compress(loud_soft, torch.tensor([True]), torch.tensor([-25.0]),
                           torch.tensor([4.0]), SR)
    before = _db(loud_soft[0, :6000]) - _db(loud_soft[0, -6000:])     # 20 dB
    after = _db(out[0, :6000]) - _db(out[0, -6000:])
    assert after < 0.5 * before and abs(_db(out) - _db(loud_soft)) < 0.01
    same = augment.compress(loud_soft, torch.tensor([False]), torch.tensor([-25.0]),
                            torch.tensor([4.0]), SR)
    assert torch.equal(same, loud_soft)


def test_limit_bounds_peaks():
    wave = torch.randn(2, 4000) * 0.2
    out = augment.limit(wave, torch.tensor([True, False]), torch.tensor([9.0, 9.0]))
    peak = wave[0].abs().max()
    assert out[0].abs().max() <= peak / 10 ** (9 / 20) + 1e-6        # tanh <= 1, over drive
    assert torch.equal(out[1], wave[1])


def test_noise_at_the_drawn_snr():
    wave = torch.stack([_tone(300), _tone(700)])
    noise = torch.randn(2, SR, generator=torch.Generator().manual_seed(5))
    out = augment.add_noise(wave, torch.tensor([True, True]), torch.tensor([20.0, 40.0]), noise)
    for b, snr in enumerate((20.0, 40.0)):
        assert abs(_db(wave[b]) - _db(out[b] - wave[b]) - snr) < 0.1


def test_dense_mixes_another_clip_quieter():
    wave = torch.stack([_tone(300), _tone(700), _tone(1100)])
    partner = torch.tensor([1, 2, 0])
    out = augment.dense(wave, torch.tensor([True, False, True]),
                        torch.tensor([-12.0, -12.0, -12.0]), partner)
    assert torch.equal(out[1], wave[1])
    extra = out[0] - wave[0]
    assert torch.allclose(extra, wave[1] * 10 ** (-12 / 20), atol=1e-6)


def test_reverb_keeps_level_and_smears_time():
    click = torch.zeros(1, SR)
    click[0, 1000] = 1.0
    noise = torch.randn(1, SR, generator=torch.Generator().manual_seed(6))
    out = augment.reverb(click, torch.tensor([True]), torch.tensor([0.5]), torch.tensor([0.5]),
                         SR, noise)
    assert abs(_db(out) - _db(click)) < 1.0
    assert out[0, 1000 + SR // 4:].abs().max() > 1e-3                # a tail 250 ms later
    assert out[0, :1000].abs().max() < 1e-6                           # causal
