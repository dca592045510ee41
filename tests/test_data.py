"""Tests for data.py: seeded composition, per-style arrangement, rendering, splits, folders."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import data

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soundfont():
    from soundfont import SoundFont
    return SoundFont()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    meta = data.build_dataset(out, pieces=4, seconds=3.0, seed=7, workers=2)
    return out, meta


def test_compose_is_seeded():
    a, b, c = data.compose(1, 6.0), data.compose(1, 6.0), data.compose(2, 6.0)
    assert a == b
    assert a["events"] != c["events"]
    assert all(0 <= e["start"] < e["end"] <= 6.0 for e in a["events"])
    assert {e["role"] for e in a["events"]} == {"melody", "chord", "bass"}


def test_same_seed_identical_audio(soundfont):
    rng = np.random.default_rng(0)
    seed = int(rng.integers(1 << 30))
    piece = data.compose(seed, 3.0)
    x = data.render_piece(soundfont, piece, "rock", seconds=3.0)
    y = data.render_piece(soundfont, data.compose(seed, 3.0), "rock", seconds=3.0)
    z = data.render_piece(soundfont, data.compose(seed + 1, 3.0), "rock", seconds=3.0)
    assert x.shape == (48000,) and np.array_equal(x, y)
    assert not np.allclose(x, z)


@pytest.mark.parametrize("seed", [3, 11])
def test_same_notes_in_every_style(seed):
    """Melody identical, and each bar's harmony (pitch classes) identical, in every style."""
    piece = data.compose(seed, 8.0)
    melody = sorted((e["pitch"], e["start"], e["end"]) for e in piece["events"]
                    if e["role"] == "melody")
    harmony = None
    for style in data.STYLES:
        parts = data.arrange(piece, style, 8.0)
        assert sorted((p, s, e) for _, _, p, _, s, e in parts["melody"]) == melody
        bar = 4 * 60.0 / piece["tempo"]
        pcs = {}
        for _, _, p, _, s, _ in parts["chords"]:
            pcs.setdefault(int(s / bar + 0.01), set()).add(p % 12)
        if harmony is None:
            harmony = pcs
        assert pcs == harmony, style
        assert all(0 <= s < e for *_, s, e in sum(parts.values(), []))


def test_no_style_silent_or_clipping(built):
    out, meta = built
    for path in out.rglob("*.wav"):
        wave, sr = sf.read(path, dtype="int16")
        assert sr == 16000 and wave.ndim == 1 and len(wave) == 3 * 16000
        x = wave.astype(np.float64) / 32768
        assert np.sqrt(np.mean(x ** 2)) > 0.03, path       # not silent
        assert np.abs(wave).max() < 32767, path             # never at full scale
        # Every part is audible: energy is spread over the clip, not one burst.
        quarters = np.sqrt(np.mean(x.reshape(4, -1) ** 2, axis=1))
        assert quarters.min() > 0.2 * quarters.max(), path


def test_build_layout_and_disjoint_splits(built):
    out, meta = built
    on_disk = json.loads((out / "metadata.json").read_text())
    assert on_disk["splits"] == meta["splits"]
    ids = {s: set(meta["splits"][s]) for s in data.SPLITS}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"])
    assert not (ids["val"] & ids["test"])
    assert set().union(*ids.values()) == set(range(4))
    for p in meta["pieces"]:
        for style in data.STYLES:
            assert (out / p["split"] / style / f"{p['id']}.wav").is_file()
        assert p["events"] and p["events"] == data.compose(p["seed"], 3.0)["events"]


@pytest.mark.parametrize("n", [3, 10, 60, 101])
def test_split_pieces(n):
    s = data.split_pieces(n, seed=5)
    all_ids = s["train"] + s["val"] + s["test"]
    assert sorted(all_ids) == list(range(n)) and s["test"] and s["val"]
    assert s == data.split_pieces(n, seed=5) and (n < 10 or s != data.split_pieces(n, seed=6))


def _tone(freq, sr, seconds, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def test_audio_folder_mixed_formats(tmp_path):
    (tmp_path / "jazz").mkdir()
    (tmp_path / "metal" / "sub").mkdir(parents=True)
    sf.write(tmp_path / "jazz" / "a.wav", _tone(440, 44100, 2.0, channels=2), 44100)
    sf.write(tmp_path / "jazz" / "b.flac", _tone(440, 22050, 1.0), 22050)
    sf.write(tmp_path / "metal" / "sub" / "c.ogg", _tone(440, 16000, 3.0), 16000)
    (tmp_path / "metal" / "broken.wav").write_bytes(b"RIFF not really a wave")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.AudioFolder(tmp_path, sample_rate=16000, clip_seconds=1.5, random_clips=False)
    assert any("broken.wav" in str(w.message) for w in caught)
    assert ds.styles == ["jazz", "metal"]
    # Consecutive 1.5 s clips: 2 s -> 1, 1 s -> 1 (zero-padded), 3 s -> 2.
    assert len(ds) == 4
    waves, labels = zip(*(ds[i] for i in range(len(ds))))
    assert all(w.shape == (24000,) for w in waves)
    assert sorted(labels) == [0, 0, 1, 1]
    for wave in waves:           # every rate was resampled to 16 kHz: the tone stays at 440 Hz
        spec = np.abs(np.fft.rfft(wave[:16000].numpy()))
        assert abs(np.argmax(spec) - 440) <= 1                 # 1 s window: 1 Hz bins
        assert 0.4 < np.abs(wave[:8000].numpy()).max() < 0.6   # stereo was averaged, not summed
    train = data.AudioFolder(tmp_path, sample_rate=16000, clip_seconds=1.5, random_clips=True)
    assert len(train) == 3 and train[2][0].shape == (24000,)


def test_audio_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        data.AudioFolder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no audio files"):
        data.AudioFolder(tmp_path)
    (tmp_path / "rock").mkdir()
    sf.write(tmp_path / "rock" / "a.wav", _tone(220, 16000, 1.0), 16000)
    with pytest.raises(ValueError, match="only one style"):
        data.AudioFolder(tmp_path)


def test_audio_folder_reads_builtin_splits(built):
    out, meta = built
    ds = data.AudioFolder(out, split="test", clip_seconds=1.0, random_clips=False)
    assert ds.styles == sorted(data.STYLES)
    assert len(ds) == len(meta["splits"]["test"]) * len(data.STYLES) * 3


def test_cli_rejects_bad_pieces(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--stage", "data", "--out", str(tmp_path),
                        "--pieces", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--pieces" in r.stderr
    assert "Traceback" not in r.stderr
