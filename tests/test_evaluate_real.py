"""Tests for evaluate_real.py: content kept against its definition, excerpts, the CLI."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import evaluate_real
import metrics

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def _chords(seed, seconds=12.0, timbre="sine"):
    """Random triads (a new one every 0.5 s) of harmonic tones: a piece with no repeats."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.5 * SR)) / SR
    out = []
    for _ in range(int(seconds / 0.5)):
        seg = np.zeros_like(t)
        for p in rng.choice(np.arange(48, 72), 3, replace=False):
            f = 440 * 2 ** ((p - 69) / 12)
            harmonics = [1] if timbre == "sine" else [1, 2, 3, 4, 5]
            for h in harmonics:
                seg += np.sin(2 * np.pi * f * h * t) / h
        out.append(seg * np.hanning(len(t)) ** 0.2)
    return torch.tensor(np.concatenate(out), dtype=torch.float32)[None] * 0.1


def test_content_kept_identity_is_one_wrong_moment_is_zero():
    src = _chords(0)
    assert evaluate_real.content_kept(src, src, SR).item() == pytest.approx(1.0, abs=1e-5)
    late = torch.roll(src, int(3.5 * SR), dims=-1)                  # right notes, wrong time
    assert abs(evaluate_real.content_kept(late, src, SR).item()) < 0.2
    other = _chords(1)                                              # other notes altogether
    assert abs(evaluate_real.content_kept(other, src, SR).item()) < 0.2
    # The same notes in another timbre keep most of the content.
    assert evaluate_real.content_kept(_chords(0, timbre="rich"), src, SR).item() > 0.6
    batch = evaluate_real.content_kept(torch.cat([src, late]), torch.cat([src, src]), SR)
    assert batch.shape == (2,) and batch[0] > 0.99 > 0.2 > abs(batch[1])


def test_render_content_kept_is_the_measure_between_renders():
    sine, rich, other = _chords(0)[0], _chords(0, timbre="rich")[0], _chords(1)[0]
    split = metrics.Split({(0, "a"): sine, (0, "b"): sine, (0, "c"): rich,
                            (1, "a"): other, (1, "b"): other, (1, "c"): other},
                           ["a", "b", "c"], "val")
    got = evaluate_real.render_content_kept(split, SR)
    by_hand = np.mean([evaluate_real.content_kept(rich[None], sine[None], SR).item()] * 2 + [1, 1])
    assert got["c"] == pytest.approx(by_hand, abs=1e-6) and 0.6 < got["c"] < 0.99
    back = evaluate_real.content_kept(sine[None], rich[None], SR).item()
    assert got["a"] == pytest.approx(np.mean([1, back, 1, 1]), abs=1e-6) == got["b"]


def test_find_files_and_excerpts(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    long = np.random.default_rng(0).standard_normal((int(60 * 22050), 2)).astype(np.float32) * 0.1
    sf.write(tmp_path / "a" / "deep" / "long.flac", long, 22050)
    sf.write(tmp_path / "a" / "short.wav", long[:22050 * 5], 22050)
    for k in range(5):
        sf.write(tmp_path / "b" / f"t{k}.flac", long[:22050 * 2, 0], 22050)
    (tmp_path / "b" / "notes.txt").write_text("not audio")
    files = evaluate_real.find_files([tmp_path / "a", tmp_path / "b"], per_dir=3)
    assert [f.name for f in files] == ["long.flac", "short.wav", "t0.flac", "t2.flac", "t4.flac"]
    tune = evaluate_real.find_files([tmp_path / "a", tmp_path / "b"], per_dir=3, tune=1)
    assert [f.name for f in tune] == ["t1.flac"]                    # a: nothing left out
    tune = evaluate_real.find_files([tmp_path / "b"], per_dir=3, tune=5)
    assert [f.name for f in tune] == ["t1.flac", "t3.flac"] and not set(tune) & set(files)
    with pytest.raises(ValueError, match="every file"):
        evaluate_real.find_files([tmp_path / "a"], per_dir=3, tune=2)
    wave, sr = evaluate_real.read_excerpt(files[0])
    assert sr == 22050 and wave.shape == (15 * 22050,)
    start = 20 * 22050                                             # a third of 60 s
    np.testing.assert_allclose(wave, long[start:start + 15 * 22050].mean(1), atol=1e-4)
    wave, _ = evaluate_real.read_excerpt(files[1])                 # shorter than 15 s: all
    assert wave.shape == (5 * 22050,)
    with pytest.raises(ValueError, match="not a folder"):
        evaluate_real.find_files([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        evaluate_real.find_files([tmp_path / "empty"])


@pytest.mark.parametrize("args, message", [(["--only-real"], "--only-real needs --real"),
                                           (["--only-real", "--real", "/no/such/dir"],
                                            "not a folder"),
                                           (["--settings", '{"guidance": 5}'], "--rows"),
                                           (["--rows", "x", "--settings", "[1]"], "JSON object"),
                                           (["--rows", "x", "--settings", '{"w": 5}'],
                                            "unknown ['w']")])
def test_cli_real_errors(args, message):
    r = subprocess.run([sys.executable, "train.py", "--stage", "eval", *args], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
