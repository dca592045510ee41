"""Tests for evaluate.py: each metric on inputs with known answers, the classifier's shapes."""
import math

import numpy as np
import pytest
import torch

import evaluate
from stft import LogMel

SR = 16000


def _tone(midi, seconds=1.0, sr=SR):
    t = torch.arange(int(seconds * sr)) / sr
    return 0.3 * torch.sin(2 * math.pi * 440 * 2 ** ((midi - 69) / 12) * t)


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(400, 8))
    assert evaluate.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("seed", [1, 2])
def test_frechet_mean_shift_is_squared_norm(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))   # correlated features
    d = rng.normal(size=6)
    assert evaluate.frechet_distance(x, x + d) == pytest.approx(d @ d, rel=1e-6, abs=1e-6)


def test_frechet_scaled_gaussian_closed_form():
    """One dimension: (mu_a - mu_b)^2 + (s_a - s_b)^2."""
    x = np.random.default_rng(3).normal(size=(1000, 1))
    y = 3 * x + 2
    sa = np.std(x, ddof=1)
    expected = (2 + 2 * x.mean()) ** 2 + (3 * sa - sa) ** 2
    assert evaluate.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("midi", [50, 57, 61, 66, 72, 79, 84])
def test_chroma_of_pure_tone_peaks_at_pitch_class(midi):
    c = evaluate.chroma(_tone(midi)[None], SR)              # (1, 12, T)
    assert c.shape[1] == 12
    inner = c[0, :, 2:-2]                                  # edge frames see reflected padding
    assert torch.all(inner.argmax(0) == midi % 12)
    assert torch.allclose(c[0].norm(dim=0), torch.ones(c.shape[-1]), atol=1e-5)


def test_content_similarity():
    a = _tone(60) + _tone(64) + _tone(67)                    # C major
    b = 2 * (_tone(48) + _tone(76) + _tone(67))              # same classes, other octaves
    c = _tone(61) + _tone(66) + _tone(70)                    # F# major: no shared class
    sim = evaluate.content_similarity(torch.stack([a, a, a]), torch.stack([a, b, c]), SR)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    assert sim[1] > 0.95 and sim[2] < 0.2


def test_spectral_distances_known_values():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 8000, generator=g)
    assert torch.allclose(evaluate.mrstft_distance(ref, ref), torch.zeros(2), atol=1e-6)
    # Halving the amplitude: spectral convergence 0.5 and |log 2| at every resolution.
    assert torch.allclose(evaluate.mrstft_distance(ref, 0.5 * ref),
                          torch.full((2,), 0.5 + math.log(2)), atol=1e-3)
    # Gain g changes every bin's power by 20 log10 g dB.
    assert torch.allclose(evaluate.log_spectral_distance(ref, 0.1 * ref),
                          torch.full((2,), 20.0), atol=1e-3)
    spec = torch.randn(3, 1, 16, 20, generator=g)
    assert torch.allclose(evaluate.logmel_l1(spec, spec + 0.25), torch.full((3,), 0.25))


def test_style_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, -1.0], [0.5, 0.6]])
    assert evaluate.style_accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.5


def test_real_time_factor_counts_calls():
    calls = []
    rtf = evaluate.real_time_factor(lambda: calls.append(1), audio_seconds=2.0, repeats=4,
                                    warmup=2)
    assert len(calls) == 6 and rtf >= 0


@pytest.mark.parametrize("frames", [63, 64, 157])
def test_classifier_shapes(frames):
    model = evaluate.StyleClassifier(5, channels=(8, 8, 16, 16), emb_dim=12)
    spec = torch.randn(3, 1, 128, frames)
    assert model(spec).shape == (3, 5) and model.embed(spec).shape == (3, 12)


def test_score_system_reference_rows():
    torch.manual_seed(0)
    styles = ["a", "b", "c"]
    waves = {(p, s): torch.randn(SR * 2) * 0.1 for p in ("p0", "p1") for s in styles}
    classifier = evaluate.StyleClassifier(3, channels=(8, 8, 8, 8), emb_dim=4).eval()
    logmel = LogMel()
    oracle = evaluate.score_system(lambda w, s, t, p: waves[p, t], waves, styles, classifier,
                                   logmel, SR, window_seconds=1.0)
    identity = evaluate.score_system(lambda w, s, t, p: w, waves, styles, classifier, logmel,
                                     SR, window_seconds=1.0)
    assert oracle["pairs"] == 2 * 3 * 2
    assert oracle["content_target"] == pytest.approx(1.0, abs=1e-5)
    assert oracle["logmel_l1"] == 0 and oracle["lsd"] == 0 and oracle["fad_c"] < 1e-6
    assert identity["content_source"] == pytest.approx(1.0, abs=1e-5)
    assert identity["logmel_l1"] > 0.1 and identity["fad_c"] > 0
    table = evaluate.results_table({"oracle": oracle, "identity": identity})
    assert "| oracle |" in table and table.count("\n") == 3
    resynth = evaluate.score_system(lambda w, s, t, p: 0.5 * w, waves, styles, classifier,
                                    logmel, SR, window_seconds=1.0, resynthesis=True)
    assert resynth["pairs"] == 2 * 3 and "content_source" not in resynth
    assert resynth["content_target"] == pytest.approx(1.0, abs=1e-5)
    assert resynth["lsd"] == pytest.approx(20 * math.log10(2), abs=1e-3)  # half amplitude
