"""Tests for data.py: seeded composition, per-style arrangement, rendering, splits, folders."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import data
import music

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def soundfont():
    from soundfont import SoundFont
    return SoundFont()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    meta = data.build_dataset(out, pieces=4, seconds=3.0, seed=7, workers=2,
                              soundfonts=["timgm6mb"])
    return out, meta


def test_same_seed_identical_audio(soundfont):
    rng = np.random.default_rng(0)
    seed = int(rng.integers(1 << 30))
    fonts = {"timgm6mb": soundfont}
    orch = music.orchestrate(seed, "rock", list(fonts))
    x = data.render_piece(fonts, music.compose(seed, 3.0), "rock", orch, seconds=3.0)
    y = data.render_piece(fonts, music.compose(seed, 3.0), "rock", orch, seconds=3.0)
    z = data.render_piece(fonts, music.compose(seed + 1, 3.0), "rock", orch, seconds=3.0)
    assert x.shape == (48000,) and np.array_equal(x, y)
    assert not np.allclose(x, z)


def test_soundfont_names():
    found = data.available_soundfonts()
    assert "timgm6mb" in found and all(Path(p).is_file() for p, _ in found.values())
    with pytest.raises(ValueError, match="unknown SoundFont"):
        data.available_soundfonts(["fluidr3"])


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
        for style in music.STYLES:
            assert (out / p["split"] / style / f"{p['id']}.wav").is_file()
            assert p["orchestration"][style]["parts"]["melody"]["font"] == "timgm6mb"
        assert p["events"] and p["events"] == music.compose(p["seed"], 3.0)["events"]


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
    assert ds.styles == sorted(music.STYLES)
    assert len(ds) == len(meta["splits"]["test"]) * len(music.STYLES) * 3


def test_cli_rejects_bad_pieces(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--stage", "data", "--out", str(tmp_path),
                        "--pieces", "2"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--pieces" in r.stderr
    assert "Traceback" not in r.stderr


def test_paired_latent_clips_pair_the_same_piece_at_the_same_moment():
    """Each value of a fake latent encodes (piece, style, version, frame): the source must be
    the target's piece, at the same frames, in any style and version."""
    pieces, styles, versions, frames = ["p0", "p1", "p2"], 3, 3, 40
    ids = [(p, s) for p in range(len(pieces)) for s in range(styles)]
    def latent(p, s, v):
        return (1000 * p + 100 * s + 10 * v + torch.arange(frames) / 100.0).expand(2, 3, frames)
    ver = [([latent(p, s, v) for p, s in ids], [torch.full((1, 8, 4 * frames), float(s))
                                                 for p, s in ids]) for v in range(versions)]
    ds = data.PairedLatentClips(ver, [s for _, s in ids], [pieces[p] for p, _ in ids], 16, 32)
    seen = set()
    torch.manual_seed(0)
    for _ in range(200):
        i = int(torch.randint(len(ds), ()))
        z0, label, ref, src = ds[i]
        p, s = ids[i]
        assert label == s and z0.shape == src.shape == (2, 3, 16) and ref.shape == (1, 8, 32)
        assert int(z0[0, 0, 0]) // 10 == 100 * p + 10 * s             # clean target (version 0)
        torch.testing.assert_close(z0 % 1, src % 1, atol=1e-3, rtol=0)  # the same frames
        assert int(src[0, 0, 0]) // 1000 == p                          # the same piece
        assert (ref == s).all()                                       # a reference in style s
        seen.add(int(src[0, 0, 0]) % 1000 // 10)
    assert len(seen) == styles * versions                             # every style and version


@pytest.mark.parametrize("n, up, down", [(1000, 160, 441), (999, 441, 160), (5, 2, 3),
                                         (300, 1, 3), (7, 3, 1), (64, 147, 160)])
def test_resample_poly_matches_scipy(n, up, down):
    """The hand-written polyphase resampler against scipy.signal.resample_poly (its
    definition: zero-stuffing, the Kaiser-windowed sinc, decimation), batched rows too."""
    from scipy.signal import resample_poly
    x = np.random.default_rng(n + up).standard_normal((2, n)).astype(np.float32)
    ours, ref = data.resample_poly(x, up, down), resample_poly(x, up, down, axis=-1)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    assert np.abs(ours - ref).max() < 1e-5 * (1 + np.abs(ref).max())
    assert np.allclose(data.resample_poly(x[1], up, down), ours[1], atol=1e-6)


def test_guided_clips_crop_the_guide_at_the_wave_s_frames(tmp_path):
    """A guide that is the file's own log-mel comes back as the clip's log-mel (away from
    the clip's edges, where the whole file's frames see past it); share 0 gives plain clips."""
    from stft import LogMel
    for k, style in enumerate(("a", "b")):
        (tmp_path / style).mkdir()
        noise = np.random.default_rng(k).standard_normal(int(16000 * 2.3)).astype(np.float32)
        sf.write(tmp_path / style / "p0.wav", 0.1 * noise, 16000)
    folder = data.AudioFolder(tmp_path, sample_rate=16000, clip_seconds=0.5, random_clips=True)
    logmel = LogMel(sample_rate=16000, n_fft=1024, hop=256, n_mels=64)
    frames = logmel(torch.zeros(1, folder.clip)).shape[-1]
    guides = {1: logmel(folder.waves[1][None])[0]}
    clips = data.GuidedClips(folder, guides, 1.0, 256, frames)
    torch.manual_seed(0)
    starts = set()
    for _ in range(8):
        wave, label, guide, guided = clips[0]
        assert guided and label == 1 and guide.shape == (1, 64, frames)
        own = logmel(wave[None])[0]
        torch.testing.assert_close(guide[..., 3:-3], own[..., 3:-3], atol=1e-4, rtol=1e-4)
        whole = folder.waves[1].numpy()
        starts.update(int(i) for i in np.flatnonzero(whole == wave[0].item())
                      if np.array_equal(whole[i:i + len(wave)], wave.numpy()))
    assert len(starts) > 1 and all(s % 256 == 0 for s in starts)
    wave, label, guide, guided = data.GuidedClips(folder, guides, 0.0, 256, frames)[0]
    assert not guided and label == 0 and not guide.any() and wave.shape == (folder.clip,)


def test_cross_style_pairs_and_decoded_clips_align_latent_and_target(tmp_path):
    """Pairs: distinct targets within a piece, each from another style of the same piece,
    the first draw the same whatever per_piece. DecodedClips: a 'latent' whose frames are
    the target's own log-mel frames pooled by f comes back beside the stretch of the target
    render that those frames cover."""
    from stft import LogMel
    for k, style in enumerate(("a", "b", "c")):
        (tmp_path / style).mkdir()
        for piece in ("p0", "p1"):
            noise = np.random.default_rng(k + 7 * len(piece + style)).standard_normal(
                int(16000 * 2.3)).astype(np.float32)
            sf.write(tmp_path / style / f"{piece}.wav", 0.1 * noise, 16000)
    folder = data.AudioFolder(tmp_path, sample_rate=16000, clip_seconds=0.5, random_clips=True)
    one, two = data.cross_style_pairs(folder, 3), data.cross_style_pairs(folder, 3, 2)
    assert len(one) == 2 and len(two) == 4 and set(one.items()) <= set(two.items())
    for tgt, src in two.items():
        assert folder.paths[tgt].stem == folder.paths[src].stem and \
            folder.labels[tgt] != folder.labels[src]
    f, hop, frames = 4, 256, 8
    logmel = LogMel(sample_rate=16000, n_fft=1024, hop=hop, n_mels=32)
    latents = {i: torch.nn.functional.avg_pool1d(logmel(folder.waves[i][None])[0, 0], f)[None]
               for i in one}                                  # (1, 32, T / f)
    clips = data.DecodedClips(folder, latents, f, hop, frames)
    torch.manual_seed(0)
    for _ in range(6):
        wave, label, z, target = clips[0]
        assert wave.shape == (folder.clip,) and z.shape == (1, 32, frames)
        assert target.shape == ((frames * f - 1) * hop,)
        pooled = torch.nn.functional.avg_pool1d(logmel(target[None])[0, 0], f)
        torch.testing.assert_close(pooled[..., 1:-1], z[0, ..., 1:-1], atol=1e-4, rtol=1e-4)
