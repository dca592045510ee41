"""Tests for stereo.py: the rebuilt image against the source's, and the mono sum."""
import numpy as np
import pytest
import scipy.signal

import stereo

SR = 44100


def band_correlations(x, edges=(100, 300, 1000, 3000, 10000)):
    """L/R correlation of each band of a (N, 2) signal (scipy Butterworth band-passes)."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sos = scipy.signal.butter(4, [lo, hi], btype="band", fs=SR, output="sos")
        out.append(stereo.correlation(scipy.signal.sosfiltfilt(sos, x, axis=0)))
    return np.array(out)


def mix(rng, seconds=3.0):
    """Noise in four bands, each panned and made wide by its own amount: (N, 2)."""
    n = int(seconds * SR)
    out = np.zeros((n, 2))
    for (lo, hi), pan, width in zip(((100, 300), (300, 1000), (1000, 3000), (3000, 10000)),
                                    (0.8, -0.5, 0.1, -0.9), (0.0, 0.3, 0.8, 0.2)):
        sos = scipy.signal.butter(6, [lo, hi], btype="band", fs=SR, output="sos")
        m, s = (scipy.signal.sosfilt(sos, rng.standard_normal(n)) for _ in range(2))
        out += np.stack([m * (1 + pan) + width * s, m * (1 - pan) - width * s], 1)
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_widened_mid_has_the_source_band_correlations(seed):
    x = mix(np.random.default_rng(seed))
    y = stereo.widen(x.mean(1), x, SR)
    src, out = band_correlations(x), band_correlations(y)
    assert np.abs(src - out).max() < 0.15, (src, out)
    assert np.abs(src - band_correlations(np.stack([x.mean(1)] * 2, 1))).max() > 0.5


def test_mono_sum_is_the_mid_exactly():
    rng = np.random.default_rng(2)
    x, mid = mix(rng, 1.0), rng.standard_normal(SR)          # any mid: another signal
    y = stereo.widen(mid, x, SR)
    np.testing.assert_allclose(y.mean(1), mid, atol=1e-5)
    assert np.abs(y[:, 0] - y[:, 1]).mean() > 0.1 * np.abs(mid).mean()


def test_panned_source_comes_back_as_it_was():
    """A source whose bands are purely panned (no width) is its own mid's widening."""
    rng = np.random.default_rng(3)
    m = rng.standard_normal(2 * SR)
    x = np.stack([1.6 * m, 0.4 * m], 1)                      # pan 0.6 everywhere
    y = stereo.widen(x.mean(1), x, SR)
    inner = slice(SR // 4, -SR // 4)
    assert np.abs(y[inner] - x[inner]).max() < 1e-3 * np.abs(x).max()


def test_mono_and_silent_sources_stay_mono():
    m = np.random.default_rng(4).standard_normal(SR)
    for x in (np.stack([m, m], 1), np.zeros((SR, 2))):
        y = stereo.widen(m, x, SR)
        np.testing.assert_allclose(y[:, 0], y[:, 1], atol=1e-6)
