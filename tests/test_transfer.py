"""Tests for transfer.py: windows, whole songs, the command line and every bad input.

They use the committed checkpoints (autoencoder.pt, ldm.pt), a few seconds of
examples/song.wav, 2 denoising steps and Griffin-Lim, except where GuideDiff is the point
(a tiny random GuideDiff checkpoint in a temporary checkpoint folder)."""
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import autoencoder
import config
import data
import diffusion
import guidediff
import plot
import transfer

ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "checkpoints"
SONG = ROOT / "examples" / "song.wav"
pytestmark = pytest.mark.skipif(not (CKPT / "ldm.pt").is_file(), reason="no ldm checkpoint")


@pytest.fixture(scope="module")
def models():
    return transfer.load_models(CKPT, vocoder="griffinlim")


@pytest.fixture(scope="module")
def song():
    return data.load_audio(SONG, 16000)          # (160000,) float32: 10 s at 16 kHz


def run_cli(capsys, *argv):
    """transfer.main in this process: (exit status, stdout, stderr)."""
    try:
        code = transfer.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def files_under(path):
    return sorted(str(p) for p in Path(path).rglob("*"))


def write(path, wave, sr, **kw):
    sf.write(str(path), wave, sr, **kw)
    return path


# ---------------------------------------------------------------- windows and chunks
@pytest.mark.parametrize("length", [5, 16, 17, 40, 100, 1000])
def test_windows_cover_the_song_and_overlap(length):
    window, overlap = 16, 4
    starts = diffusion.window_starts(length, window, overlap)
    w = min(window, length)
    covered = np.zeros(length, int)
    for s in starts:
        covered[s:s + w] += 1
    assert covered.min() >= 1 and starts[0] == 0 and starts[-1] + w == length
    assert all(b - a <= window - overlap for a, b in zip(starts, starts[1:]))  # overlap >= 4
    weights = diffusion.window_weights(w, overlap)
    assert (weights > 0).all() and (weights <= 1).all()


def test_windowed_model_equals_a_positionwise_model():
    """A model that looks at one position at a time gives the same prediction in every
    window, so the blend must reproduce it exactly (any seam would show here)."""
    def model(x, t, c):
        return x * (1 + t.float() / 1000)[:, None, None, None] + c.mean((1, 2))[:, None, None, None]

    x, t, c = torch.randn(2, 4, 8, 100), torch.tensor([10, 700]), torch.randn(2, 3, 5)
    blended = diffusion.windowed(model, 100, window=16, overlap=4, batch=3, bf16=False)(x, t, c)
    torch.testing.assert_close(blended, model(x, t, c))
    other = diffusion.windowed(lambda x, t, c: torch.ones_like(x), 100, 16, 4, bf16=False)
    torch.testing.assert_close(other(x, t, c), torch.ones_like(x))


def test_windowed_cond_reaches_each_window_in_place():
    """Source channels are cut into the same windows as x_t: a model that adds the source
    position-wise gives x + source everywhere, and the batch of guidance (2 B) sees it."""
    def model(x, t, c):
        return x[:, :4] + 2 * x[:, 4:]

    x, src = torch.randn(2, 4, 8, 100), torch.randn(1, 4, 8, 100)
    t, c = torch.tensor([10, 700]), torch.randn(2, 3, 5)
    out = diffusion.windowed(model, 100, 16, 4, batch=5, bf16=False, cond=src)(x, t, c)
    torch.testing.assert_close(out, x + 2 * src)


@pytest.mark.parametrize("scale", [0.25, 1.0, 4.0])
def test_in_chunks_equals_one_call(scale):
    """Chunks with enough context reproduce a local operator exactly."""
    x = torch.randn(1, 3, 1001 if scale < 1 else 250)
    conv = torch.nn.Conv1d(3, 3, 5, padding=2)

    def fn(y):                    # receptive field of +-2 frames, then resampled by `scale`
        y = conv(y)
        if scale < 1:
            y = torch.nn.functional.avg_pool1d(y, 4, ceil_mode=True)
        return y.repeat_interleave(int(scale), -1) if scale > 1 else y
    with torch.no_grad():
        whole = fn(x)
        chunked = autoencoder.in_chunks(fn, x, chunk=64, margin=8, scale=scale)
    assert chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole)


# ---------------------------------------------------------------- whole songs
@pytest.mark.parametrize("sr", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_duration_and_sample_rate_preserved(models, song, sr, channels):
    x = data.resample(song[:24000], 16000, sr)                      # 1.5 s
    if channels == 2:
        x = np.stack([x, 0.5 * x], axis=1)                          # (N, 2)
    out, out_sr = transfer.transfer(x, sr, "rock", steps=2, models=models, progress=False)
    assert out_sr == sr and out.dtype == np.float32 and out.shape == x.shape
    # sound, not an explosion (2 steps from a band-limited 8-kHz source can peak near 2)
    assert np.isfinite(out).all() and 1e-3 < np.abs(out).max() <= 4.0


@pytest.mark.parametrize("mono", [False, True])
def test_cli_stereo_flac_at_44k1_gives_wav_of_same_duration(tmp_path, capsys, song, mono):
    x = data.resample(song[:32000], 16000, 44100)
    src = write(tmp_path / "song.flac", np.stack([x, -x * 0.3], 1), 44100)
    code, out, err = run_cli(capsys, src, "guitar", "--steps", 2, "--vocoder", "griffinlim",
                             *(["--mono"] if mono else []))
    info = sf.info(str(tmp_path / "song.guitar.wav"))                # the default name
    assert code == 0 and out.strip() == str(tmp_path / "song.guitar.wav")
    assert (info.samplerate, info.channels, info.frames) == (44100, 1 if mono else 2, len(x))


def test_long_input_equals_its_parts_away_from_the_junction(models, song):
    """Transfer 10 s whole and as two parts (with the same noise, cut from the whole's):
    away from the cut, the log-mels before the vocoder agree far more closely than two
    transfers of the song with different noise do. Windows of 16 latent frames, hop 8,
    and a cut at latent frame 80 make the parts' windows the whole's windows."""
    spec = transfer.log_mel(models, song, 16000)                    # (1, 1, 128, 626)
    ae, scale = models.autoencoder, models.latent_scale
    context = models.ldm.style.from_labels(torch.tensor([models.styles.index("rock")]))
    g = torch.Generator().manual_seed(0)
    noise, other_noise = (torch.randn(1, 4, 32, 157, generator=g) for _ in range(2))
    window, overlap, cut = 16, 8, 80                                 # cut in latent frames
    starts = diffusion.window_starts(157, window, overlap)
    assert set(diffusion.window_starts(cut, window, overlap)) <= set(starts)
    assert {cut + s for s in diffusion.window_starts(157 - cut, window, overlap)} <= set(starts)

    def run(s, n):
        with torch.no_grad():
            z = transfer.stylize(models, ae.encode(s).mode() * scale, context, steps=2,
                                 noise=n, mode="sdedit", strength=transfer.STRENGTH,
                                 guidance=transfer.GUIDANCE, window=window, overlap=overlap)
            return ae.decode(z / scale)[0, 0, :, :s.shape[-1]]          # (128, T)
    whole, other = run(spec, noise), run(spec, other_noise)
    parts = torch.cat([run(spec[..., :4 * cut], noise[..., :cut]),
                       run(spec[..., 4 * cut:], noise[..., cut:])], -1)
    assert parts.shape == whole.shape == (128, 626)
    margin = 4 * 3 * window                  # 2 steps spread a difference ~2 windows, + the AE
    away = torch.cat([torch.arange(0, 4 * cut - margin), torch.arange(4 * cut + margin, 626)])
    error = (whole - parts)[:, away].abs().mean()
    spread = (whole - other)[:, away].abs().mean()
    assert error < 0.1 * spread, (error, spread)


def test_same_seed_same_output(models, song):
    def run(seed):
        return transfer.transfer(song[:24000], 16000, "flute", steps=2, seed=seed,
                                 models=models, progress=False)[0]
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1e-3


def test_inversion_with_a_reference_clip(tmp_path, capsys, song):
    src = write(tmp_path / "in.wav", song[:24000], 16000)
    ref = write(tmp_path / "clip.ogg", song[80000:112000], 16000)
    code, _, err = run_cli(capsys, src, "--ref", ref, "--mode", "inversion", "--steps", 2,
                           "--vocoder", "griffinlim")
    out, _ = sf.read(str(tmp_path / "in.clip.wav"))
    assert code == 0 and out.shape == (24000,) and np.abs(out).max() > 1e-3


def test_silence_warns_and_writes_silence(tmp_path, capsys):
    src = write(tmp_path / "quiet.wav", np.zeros((22050, 2), np.float32), 22050)
    code, _, err = run_cli(capsys, src, "rock", "--vocoder", "griffinlim")
    out, sr = sf.read(str(tmp_path / "quiet.rock.wav"))
    assert code == 0 and "silent" in err and sr == 22050 and out.shape == (22050, 2)
    assert not out.any()


def test_shorter_than_one_window_is_padded(tmp_path, capsys, song):
    src = write(tmp_path / "blip.wav", data.resample(song[:800], 16000, 44100), 44100)
    code, _, err = run_cli(capsys, src, "piano", "--steps", 2, "--vocoder", "griffinlim")
    assert code == 0 and sf.info(str(tmp_path / "blip.piano.wav")).frames == 2205
    assert "(windows: 1)" in err             # padded to exactly one window


def test_list_styles(capsys):
    code, out, _ = run_cli(capsys, "--list-styles")
    assert code == 0
    assert out.split() == config.load_checkpoint(CKPT / "ldm.pt", "ldm")["styles"]


def test_plot_writes_a_valid_png(tmp_path, capsys, song):
    src = write(tmp_path / "in.wav", song[:32000], 16000)            # 2 s: 126 frames
    png = tmp_path / "spec.png"
    code, _, _ = run_cli(capsys, src, "rock", "--steps", 2, "--vocoder", "griffinlim",
                         "--plot", png)
    blob = png.read_bytes()
    assert code == 0 and blob[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(blob):                   # length, type, body, CRC-32 of type + body
        (n,), kind = struct.unpack(">I", blob[pos:pos + 4]), blob[pos + 4:pos + 8]
        body, crc = blob[pos + 8:pos + 8 + n], blob[pos + 8 + n:pos + 12 + n]
        assert crc == struct.pack(">I", zlib.crc32(kind + body))
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    W, H, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (W, H) == (plot.LEFT + 2 * 126 + plot.GAP + plot.BAR,
                      plot.TOP + plot.ROW_SCALE * 128 + plot.BOTTOM)
    assert (depth, colour) == (8, 2) and b"IEND" in chunks
    rows = zlib.decompress(chunks[b"IDAT"])
    assert len(rows) == H * (1 + 3 * W) and rows[::1 + 3 * W] == bytes(H)   # filter bytes 0
    img = np.frombuffer(rows, np.uint8).reshape(H, 1 + 3 * W)[:, 1:].reshape(H, W, 3)
    ink = (img == plot.INK).all(-1)
    # labels in every margin: Hz at the left, seconds below, titles above, dB at the right
    assert ink[plot.TOP:-plot.BOTTOM, :plot.LEFT - 6].sum() > 50
    assert ink[-plot.BOTTOM + 5:].sum() > 100 and ink[:plot.TOP - 2].sum() > 100
    assert ink[plot.TOP:-plot.BOTTOM, -plot.BAR + 26:].sum() > 50


# ---------------------------------------------------------------- GuideDiff
def tiny_guidediff_dir(tmp_path, schedules):
    """A checkpoint folder: the committed ldm and autoencoder, and a tiny random GuideDiff."""
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    for stage in ("ldm", "autoencoder"):
        (ckpt_dir / f"{stage}.pt").symlink_to(CKPT / f"{stage}.pt")
    cfg = config.config_from_dict(config.load_checkpoint(CKPT / "ldm.pt", "ldm")["config"])
    cfg.guidediff = config.GuideDiffConfig(dim=16, hidden=32, layers=1, guide_layers=1,
                                           emb_dim=16, default_steps=2)
    torch.manual_seed(0)
    extra = dict(schedules=schedules, default_steps=2) if schedules else {}
    config.save_checkpoint(ckpt_dir / "guidediff.pt", model=guidediff.build(cfg).state_dict(),
                           config=config.config_to_dict(cfg), step=1, **extra)
    return ckpt_dir


@pytest.mark.parametrize("finished", [True, False])
def test_guidediff_vocoder(tmp_path, capsys, song, finished):
    ckpt_dir = tiny_guidediff_dir(tmp_path, {2: [1.0, 0.3]} if finished else None)
    src = write(tmp_path / "in.wav", data.resample(song[:24000], 16000, 22050), 22050)
    code, _, err = run_cli(capsys, src, "rock", "--steps", 2, "--ckpt-dir", ckpt_dir)
    assert code == 0 and ("GuideDiff" if finished else "Griffin-Lim") in err.splitlines()[0]
    models = transfer.load_models(ckpt_dir, vocoder="guidediff")    # used on request
    assert models.noise_levels == ([1.0, 0.3] if finished else
                                   guidediff.candidate_schedules(2)[0])
    out, sr = transfer.transfer(song[:24000], 16000, "rock", steps=2, models=models,
                                progress=False)
    assert out.shape == (24000,) and np.isfinite(out).all()
    info = sf.info(str(tmp_path / "in.rock.wav"))
    assert (info.samplerate, info.frames) == (22050, 33075)


# ---------------------------------------------------------------- bad input
def _bad_inputs():
    """name -> function(tmp_path, song) returning (argv, words the one-line message names)."""
    def audio(tmp_path, song, name="in.wav"):
        return write(tmp_path / name, song[:16000], 16000)

    def ckpt_dir(tmp_path, ldm=None, autoencoder=None):
        d = tmp_path / "ckpt"
        d.mkdir()
        for stage, replacement in (("ldm", ldm), ("autoencoder", autoencoder)):
            if replacement is None:
                (d / f"{stage}.pt").symlink_to(CKPT / f"{stage}.pt")
            else:
                replacement(d / f"{stage}.pt")
        return ["--ckpt-dir", d]

    def other_scale(path):
        ckpt = config.load_checkpoint(CKPT / "autoencoder.pt", "autoencoder")
        config.save_checkpoint(path, **dict(ckpt, latent_scale=1.0))

    def nonfinite(value):
        def case(t, s):
            x = s[:16000].copy()
            x[100] = value
            return [write(t / "in.wav", x, 16000, subtype="FLOAT"), "rock"], ["NaN or infinite"]
        return case

    def text(t, name, content):
        (t / name).write_bytes(content)
        return t / name
    return {
        "missing file": lambda t, s: ([t / "nope.wav", "rock"], ["no input file"]),
                "empty file": lambda t, s: ([text(t, "in.wav", b""), "rock"], ["empty"]),
        "corrupt file": lambda t, s: ([text(t, "in.wav", audio(t, s).read_bytes()[:30]), "rock"],
                                      ["not audio"]),
        "non-audio file": lambda t, s: ([text(t, "in.wav", b"title,artist\n" * 50), "rock"],
                                        ["not audio", "WAV"]),
        "no samples": lambda t, s: ([write(t / "in.wav", np.zeros(0, np.float32), 16000),
                                     "rock"], ["no samples"]),
        "NaN samples": nonfinite(np.nan),
        "infinite samples": nonfinite(np.inf),
        "unknown style": lambda t, s: ([audio(t, s), "jazz"], ["'jazz'", "electronic, flute"]),
        "no style": lambda t, s: ([audio(t, s)], ["STYLE", "--ref"]),
        "style and ref": lambda t, s: ([audio(t, s), "rock", "--ref", audio(t, s, "r.wav")],
                                       ["STYLE", "--ref"]),
        "missing reference": lambda t, s: ([audio(t, s), "--ref", t / "r.wav"], ["reference"]),
        "silent reference": lambda t, s: ([audio(t, s), "--ref", write(
            t / "r.wav", np.zeros(8000, np.float32), 16000)], ["reference", "silent"]),
        "strength out of range": lambda t, s: ([audio(t, s), "rock", "--strength", 1.5],
                                               ["strength"]),
        "unknown mode": lambda t, s: ([audio(t, s), "rock", "--mode", "ddpm"], ["mode"]),
        "missing checkpoints": lambda t, s: ([audio(t, s), "rock", "--ckpt-dir", t / "none"],
                                             ["ldm", "python train.py --stage ldm"]),
        "garbage checkpoint": lambda t, s: ([audio(t, s), "rock", *ckpt_dir(
            t, ldm=lambda p: p.write_bytes(b"\0" * 100))], ["python train.py --stage ldm"]),
        "checkpoint of another stage": lambda t, s: ([audio(t, s), "rock", *ckpt_dir(
            t, ldm=lambda p: p.symlink_to(CKPT / "classifier.pt"))],
            ["python train.py --stage ldm"]),
        "ldm of another autoencoder": lambda t, s: ([audio(t, s), "rock", *ckpt_dir(
            t, autoencoder=other_scale)], ["python train.py --stage ldm"]),
        "missing guidediff": lambda t, s: ([audio(t, s), "rock", "--vocoder", "guidediff",
                                            *ckpt_dir(t)], ["python train.py --stage guidediff"]),
        "missing output folder": lambda t, s: ([audio(t, s), "rock", "-o", t / "no" / "o.wav"],
                                               ["does not exist"]),
        "output folder is a file": lambda t, s: (
            [audio(t, s), "rock", "-o", audio(t, s, "f.wav") / "o.wav"], ["not a folder"]),
        "output is the input": lambda t, s: ([audio(t, s), "rock", "-o", t / "in.wav"],
                                             ["is the input"]),
        "several inputs, -o a file": lambda t, s: (
            [audio(t, s), audio(t, s, "b.wav"), "rock", "-o", t / "o.wav"], ["existing folder"]),
        "a folder with no audio": lambda t, s: ([t, "rock"], ["no audio files"]),
        "too little memory": lambda t, s: ([audio(t, s), "rock", "--mem"], ["GB of free memory"]),
        "unknown style, close to one": lambda t, s: ([audio(t, s), "rokc"], ["'rokc'",
                                                                             "did you mean rock"]),
        "a file where the style goes": lambda t, s: ([audio(t, s), audio(t, s, "b.wav")],
                                                     ["b.wav is a file", "STYLE"]),
        "output format unknown": lambda t, s: ([audio(t, s), "rock", "-o", t / "o.mp4"],
                                               [".mp4", ".wav"]),
        "unknown option": lambda t, s: ([audio(t, s), "rock", "--sampler", "ddpm"],
                                        ["--sampler"]),
    }


BAD = _bad_inputs()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, song, case,
                                                         monkeypatch):
    argv, words = BAD[case](tmp_path, song)
    if "--mem" in argv:                      # a small machine: 100 MB free
        argv.remove("--mem")
        monkeypatch.setattr(transfer.audio_io, "available_memory", lambda: 100e6)
    before = files_under(tmp_path)
    code, out, err = run_cli(capsys, *argv, "--steps", 2, "--vocoder", "griffinlim") \
        if case not in ("missing guidediff", "unknown option") else run_cli(capsys, *argv)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    assert files_under(tmp_path) == before and out == ""


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_unwritable_output_folder(tmp_path, capsys, song):
    src = write(tmp_path / "in.wav", song[:16000], 16000)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, src, "rock", "-o", locked / "o.wav")
        assert code == 2 and "cannot write" in err and not any(locked.iterdir())
    finally:
        locked.chmod(0o700)


def test_errors_in_a_real_process_have_no_traceback(tmp_path):
    for argv in ([tmp_path / "nope.wav", "rock"], [SONG, "jazz", "-o", tmp_path / "o.wav"]):
        r = subprocess.run([sys.executable, str(ROOT / "transfer.py"), *map(str, argv)],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "Traceback" not in r.stderr and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- stereo, blocks, several inputs
def stereo_song(song, sr=44100, seconds=2.0):
    """A stereo mix: the song panned left for its first half, right for its second, and
    a decorrelated quiet copy (room) in both: channels that differ in time and band."""
    x = data.resample(song, 16000, sr)
    n = int(seconds * sr)
    left = np.where(np.arange(n) < n // 2, 0.9, 0.3)
    room = np.roll(x[n:2 * n], 1234)
    return np.stack([left * x[:n] + 0.1 * room, (1.2 - left) * x[:n] - 0.1 * room], 1)


def test_stereo_output_keeps_the_source_image_and_its_mid_is_the_mono_transfer(models, song):
    import stereo
    x = stereo_song(song).astype(np.float32)
    # (a target near the source's spectrum: where the output has energy the source had
    # not, e.g. drums over piano, there is no image to copy and the band comes out central)
    out, _ = transfer.transfer(x, 44100, "Flute", steps=2, models=models, progress=False)
    mid, _ = transfer.transfer(x.mean(1), 44100, "flute", steps=2, models=models,
                               progress=False)
    assert out.shape == x.shape
    np.testing.assert_allclose(out.mean(1), mid, atol=1e-5)   # the mono sum: no comb
    source_r, output_r = stereo.correlation(x), stereo.correlation(out)
    assert abs(source_r - output_r) < 0.25 and output_r < 0.9, (source_r, output_r)
    # the left/right balance follows the source's in time: left, then right
    for half in (slice(0, 33075), slice(55125, None)):       # away from the turn
        balance = [np.sign((v[half, 0] ** 2).sum() - (v[half, 1] ** 2).sum()) for v in (x, out)]
        assert balance[0] == balance[1]


def test_blocks_join_into_the_whole_song(models, song, monkeypatch):
    """Streamed in 2-s blocks, a 9-s stereo song comes out close to how it does in one
    block (log-mels closer than another seed's by far; not equal: the autoencoder's
    GroupNorm sees each block's statistics, as it sees each AE_CHUNK's on long songs), and
    the blocks cover it edge to edge on whole latent frames at both rates."""
    x = data.resample(song[:144000], 16000, 44100)
    x = np.stack([x, 0.5 * x], 1).astype(np.float32)

    def run(seed=0):
        return transfer.transfer(x, 44100, "piano", steps=2, seed=seed, models=models,
                                 progress=False, mode="sdedit", strength=0.5)[0]
    whole, other = run(), run(1)
    monkeypatch.setattr(transfer, "BLOCK_SECONDS", 2.0)
    monkeypatch.setattr(transfer, "BLOCK_MARGIN", 1.0)
    plan = transfer.blocks(models, 44100, len(x))
    assert len(plan) == 5 and plan[0][1] == 0 and plan[-1][2] == len(x)
    assert all(p[2] == q[1] for p, q in zip(plan, plan[1:]))
    assert all(s % 14112 == 0 for _, s, _, _ in plan)          # 0.32 s: 5 latent frames
    parts = run()
    assert parts.shape == x.shape

    def spec(v):
        return transfer.log_mel(models, v.mean(1), 44100)[0, 0]
    error, spread = ((spec(v) - spec(whole)).abs().mean() for v in (parts, other))
    assert error < 0.3 * spread, (error, spread)              # measured: 0.17


def test_positional_noise_agrees_where_spans_overlap():
    a = diffusion.positional_noise(1000, 50000, seed=3)
    b = diffusion.positional_noise(40000, 90000, seed=3)
    torch.testing.assert_close(a[40000 - 1000:], b[:10000])
    assert not torch.equal(diffusion.positional_noise(0, 100, 3), diffusion.positional_noise(0, 100, 4))


def test_several_inputs_and_a_folder_in_one_call(tmp_path, capsys, song, monkeypatch):
    loads = []
    real_load = transfer.load_models
    monkeypatch.setattr(transfer, "load_models", lambda *a, **k: loads.append(1) or
                        real_load(*a, **k))
    folder = tmp_path / "album"
    (folder / "cd2").mkdir(parents=True)
    a = write(folder / "a.wav", song[:16000], 16000)
    b = write(folder / "cd2" / "b.flac", np.stack([song[:16000]] * 2, 1), 16000)
    write(folder / "a.rock.wav", song[:8000], 16000)             # an earlier output: skipped
    c = write(tmp_path / "c.ogg", song[16000:32000], 16000)
    bad = tmp_path / "missing.wav"
    code, out, err = run_cli(capsys, c, bad, folder, "ROCK", "--steps", 2,
                             "--vocoder", "griffinlim")
    made = [folder / "a.rock.wav", folder / "cd2" / "b.rock.wav", tmp_path / "c.rock.wav"]
    assert code == 2 and len(loads) == 1
    assert sorted(out.split()) == sorted(map(str, made))
    assert "missing.wav" in err and "1 of 4 inputs failed" in err
    assert sf.info(str(made[1])).channels == 2 and sf.info(str(made[0])).frames == 16000
    assert a.exists() and b.exists() and not list(tmp_path.rglob(".*tmp"))


def test_several_inputs_into_an_output_folder_with_pictures(tmp_path, capsys, song):
    srcs = [write(tmp_path / f"{name}.wav", song[:16000], 16000) for name in "xy"]
    (tmp_path / "out").mkdir()
    code, out, err = run_cli(capsys, *srcs, "--style", "Flute", "-o", tmp_path / "out",
                             "--plot", tmp_path / "out", "--steps", 2, "--vocoder", "griffinlim")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "x.flute.png", "x.flute.wav", "y.flute.png", "y.flute.wav"]


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_or_killed_leaves_nothing(tmp_path, song, signum):
    """Ctrl-C (SIGINT), SIGTERM and SIGKILL in the middle of a transfer: the folder holds
    the input and nothing else."""
    import signal
    import time
    if signum == "SIGKILL" and not hasattr(os, "O_TMPFILE"):
        pytest.skip("without O_TMPFILE a killed process leaves its temporary file")
    src = write(tmp_path / "in.wav", np.tile(song, 3), 16000)           # 30 s
    p = subprocess.Popen([sys.executable, str(ROOT / "transfer.py"), str(src), "rock",
                          "--steps", "200", "--vocoder", "griffinlim"],
                         stderr=subprocess.PIPE, cwd=tmp_path)
    seen, t0 = b"", time.time()
    while b"step" not in seen and time.time() - t0 < 120:                # the U-Net is running
        seen += os.read(p.stderr.fileno(), 4096)
    p.send_signal(getattr(signal, signum))
    rest = p.communicate(timeout=60)[1]
    assert p.returncode != 0 and b"Traceback" not in seen + rest, (seen + rest)[-500:]
    if signum != "SIGKILL":
        assert p.returncode == 130 and b"interrupted" in rest
    assert [f.name for f in tmp_path.iterdir()] == ["in.wav"]
