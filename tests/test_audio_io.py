"""Tests for audio_io.py: streamed reading, inputs, style names and atomic writes."""
import os

import numpy as np
import pytest
import soundfile as sf

import audio_io


def test_blocks_read_what_the_whole_file_holds(tmp_path):
    x = np.random.default_rng(0).uniform(-1, 1, (10000, 2)).astype(np.float32)
    sf.write(str(tmp_path / "a.flac"), x, 22050, subtype="PCM_24")
    source = audio_io.open_audio(tmp_path / "a.flac")
    whole = source.read(0, source.frames)
    assert (source.sr, source.frames, source.channels) == (22050, 10000, 2)
    np.testing.assert_array_equal(np.concatenate([source.read(0, 3333), source.read(3333, 10000)]),
                                  whole)
    np.testing.assert_allclose(whole, x, atol=2 ** -22)


def test_more_than_two_channels_is_refused(tmp_path):
    sf.write(str(tmp_path / "six.wav"), np.zeros((100, 6), np.float32), 16000)
    with pytest.raises(ValueError, match="6 channels"):
        audio_io.open_audio(tmp_path / "six.wav")


def test_style_names_are_case_insensitive_and_close_ones_are_suggested():
    styles = ["piano", "strings", "rock"]
    assert audio_io.closest("ROCK", styles) == "rock"
    with pytest.raises(ValueError, match="did you mean strings"):
        audio_io.closest("string", styles)
    with pytest.raises(ValueError, match="known styles: piano, rock, strings") as e:
        audio_io.closest("zzz", styles)
    assert "did you mean" not in str(e.value)


def test_find_inputs_searches_folders_and_skips_outputs(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("d/b.wav", "d/e/a.ogg", "d/b.rock.wav", "d/.hidden.wav", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    found = audio_io.find_inputs([tmp_path / "x.wav", tmp_path / "d", tmp_path / "empty"],
                                 [".rock.wav"])
    assert [p.relative_to(tmp_path).as_posix() for p, _ in found] == [
        "x.wav", "d/b.wav", "d/e/a.ogg", "empty"]
    assert [e is None for _, e in found] == [True, True, True, False]


@pytest.mark.parametrize("unnamed", [True, False])
def test_atomic_output_appears_whole_or_not_at_all(tmp_path, monkeypatch, unnamed):
    if not unnamed:                                      # the fallback: a named temporary
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    out = tmp_path / "o.bin"
    with audio_io.atomic_output(out) as f:
        f.write(b"abc")
        assert not out.exists()
    assert out.read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with audio_io.atomic_output(out) as f:
            f.write(b"partial")
            raise RuntimeError("interrupted")
    assert out.read_bytes() == b"abc" and sorted(tmp_path.iterdir()) == [out]


def test_soft_limit_passes_the_quiet_and_bends_the_loud_alike_in_both_channels():
    x = np.random.default_rng(1).normal(scale=0.7, size=(20000, 2)).astype(np.float32)
    y = audio_io.soft_limit(x)
    quiet = np.abs(x).max(1) <= audio_io.LIMIT_KNEE
    np.testing.assert_array_equal(y[quiet], x[quiet])
    assert np.abs(y).max() <= 1 and (~quiet).sum() > 100
    loud = ~quiet
    np.testing.assert_allclose(y[loud, 0] * x[loud, 1], y[loud, 1] * x[loud, 0], atol=1e-6)
    p = np.linspace(0, 3, 3001, dtype=np.float32)[:, None]
    assert (np.diff(audio_io.soft_limit(p)[:, 0]) >= -1e-6).all()     # monotonic
