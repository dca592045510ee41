"""Tests for metrics.py: each metric on inputs with known answers, the classifier's shapes."""
import math

import numpy as np
import pytest
import torch

import metrics
from stft import mrstft_distance

SR = 16000


def _tone(midi, seconds=1.0, sr=SR):
    t = torch.arange(int(seconds * sr)) / sr
    return 0.3 * torch.sin(2 * math.pi * 440 * 2 ** ((midi - 69) / 12) * t)


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2])
def test_frechet_mean_shift_is_squared_norm(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))   # correlated features
    d = rng.normal(size=6)
    assert metrics.frechet_distance(x, x + d) == pytest.approx(d @ d, rel=1e-6, abs=1e-6)


def test_frechet_scaled_gaussian_closed_form():
    """One dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2."""
    x = np.random.default_rng(3).normal(size=(1000, 1))
    y = 3 * x + 2
    sa = np.std(x, ddof=1)
    expected = (2 + 2 * x.mean()) ** 2 + (3 * sa - sa) ** 2
    assert metrics.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("midi", [50, 57, 61, 66, 72, 79, 84])
def test_chroma_of_pure_tone_peaks_at_pitch_class(midi):
    c = metrics.chroma(_tone(midi)[None], SR)              # (1, 12, T)
    assert c.shape[1] == 12
    inner = c[0, :, 2:-2]                                  # edge frames see reflected padding
    assert torch.all(inner.argmax(0) == midi % 12)
    assert torch.allclose(c[0].norm(dim=0), torch.ones(c.shape[-1]), atol=1e-5)


def test_content_similarity():
    a = _tone(60) + _tone(64) + _tone(67)                    # C major
    b = 2 * (_tone(48) + _tone(76) + _tone(67))              # same classes, other octaves
    c = _tone(61) + _tone(66) + _tone(70)                    # F# major: no shared class
    sim = metrics.content_similarity(torch.stack([a, a, a]), torch.stack([a, b, c]), SR)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert sim[1] > 0.95 and sim[2] < 0.2


def test_spectral_distances_known_values():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 8000, generator=g)
    assert torch.allclose(mrstft_distance(ref, ref), torch.zeros(2), atol=1e-6)
    # Halving the amplitude: spectral convergence 0.5 and |log 2| at every resolution.
    assert torch.allclose(mrstft_distance(ref, 0.5 * ref),
                          torch.full((2,), 0.5 + math.log(2)), atol=1e-3)
    # Gain g changes every bin's power by 20 log10 g dB.
    assert torch.allclose(metrics.log_spectral_distance(ref, 0.1 * ref),
                          torch.full((2,), 20.0), atol=1e-3)
    spec = torch.randn(3, 1, 16, 20, generator=g)
    assert torch.allclose(metrics.logmel_l1(spec, spec + 0.25), torch.full((3,), 0.25))


def test_real_time_factor_counts_calls():
    calls = []
    rtf = metrics.real_time_factor(lambda: calls.append(1), audio_seconds=2.0, repeats=4,
                                    warmup=2)
    assert len(calls) == 6 and rtf >= 0


@pytest.mark.parametrize("frames", [63, 64, 157])
def test_classifier_shapes(frames):
    model = metrics.StyleClassifier(5, channels=(8, 8, 16, 16), emb_dim=12)
    spec = torch.randn(3, 1, 128, frames)
    assert model(spec).shape == (3, 5) and model.embed(spec).shape == (3, 12)


def test_kid_is_unbiased_mmd_and_zero_for_one_distribution():
    """Same distribution: KID averages to 0 (unbiased: single draws fall either side); a
    mean shift d in one dimension of D: the cubic kernel's MMD grows with |d|."""
    rng = np.random.default_rng(0)
    draws = [metrics.kernel_inception_distance(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)))
             for _ in range(30)]
    assert abs(np.mean(draws)) < 3 * np.std(draws) / np.sqrt(len(draws)) + 1e-3
    assert min(draws) < 0 < max(draws)
    x, y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    shifted = [metrics.kernel_inception_distance(x, y + d * np.eye(8)[0]) for d in (0.5, 1, 2)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]


def test_kid_matches_a_loop_over_pairs():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)) + 1

    def k(x, y):
        return (x @ y / 3 + 1) ** 3
    aa = sum(k(a[i], a[j]) for i in range(5) for j in range(5) if i != j) / 20
    bb = sum(k(b[i], b[j]) for i in range(4) for j in range(4) if i != j) / 12
    ab = sum(k(x, y) for x in a for y in b) / 20
    assert metrics.kernel_inception_distance(a, b) == pytest.approx(aa + bb - 2 * ab)


def test_pca_basis_keeps_the_directions_of_largest_variance():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 5)) * np.array([10.0, 0.1, 5.0, 0.1, 0.1])
    mean, components = metrics.pca_basis(x, 2)
    assert components.shape == (5, 2)
    assert set(np.abs(components).argmax(0)) == {0, 2}
    assert np.allclose(components.T @ components, np.eye(2), atol=1e-8)


def test_pitch_class_roll_and_notes_kept():
    """A render of the score's notes keeps them (close to 1); other notes do not; drums and
    the times between notes are not part of the score."""
    events = [dict(role="melody", pitch=60, start=0.0, end=0.5),       # C
              dict(role="chord", pitch=64, start=0.5, end=1.0),        # E
              dict(role="drums", pitch=36, start=0.0, end=1.0)]        # kick: no class
    hop = metrics.CHROMA_HOP
    roll = metrics.pitch_class_roll(events, 16, SR)
    centre = np.arange(16) * hop / SR
    assert roll.shape == (12, 16) and roll[0].tolist() == list((centre < 0.5).astype(float))
    assert roll[4].tolist() == list(((centre >= 0.5) & (centre < 1.0)).astype(float))
    assert roll.sum(0).max() == 1                        # the kick added nothing
    played = torch.cat([_tone(60, 0.5), _tone(64, 0.5)])  # the score, as a render
    wrong = torch.cat([_tone(61, 0.5), _tone(66, 0.5)])   # a semitone and a tritone off
    roll = metrics.pitch_class_roll(events, metrics.chroma(played[None], SR).shape[-1], SR)
    kept = metrics.notes_kept(torch.stack([played, 2 * _tone(48, 1.0), wrong]), roll, SR)
    assert kept[0] > 0.85 and kept[2] < 0.2
    assert kept[1] < kept[0]                              # C all along: half the score
