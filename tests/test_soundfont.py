"""Tests for soundfont.py: parsing TimGM6mb, pitch, looping, envelopes, velocity, the mix, and the
generator model on a tiny SoundFont written here with known answers."""
import struct

import numpy as np
import pytest
from scipy.signal import butter, lfilter

import soundfont
from soundfont import SoundFont

SR = 16000


@pytest.fixture(scope="module")
def sf():
    return SoundFont()


def frame_rms(x, frame):
    n = len(x) // frame
    return np.sqrt((x[:n * frame].reshape(n, frame) ** 2).mean(axis=1))


def test_parses_general_midi_font(sf):
    assert len(sf.presets) > 100
    names = {(b, p): n for b, p, n in sf.presets}
    assert "Piano" in names[0, 0] and (128, 0) in names    # bank 128: the GM drum kit
    assert sf.presets == sorted(sf.presets)
    assert sf.has_preset(128, 25) and not sf.has_preset(128, 99)


def test_errors_name_the_problem(sf, tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        SoundFont(tmp_path / "missing.sf2")
    junk = tmp_path / "junk.sf2"
    junk.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(ValueError, match="not a SoundFont 2"):
        SoundFont(junk)
    with pytest.raises(ValueError, match=r"bank 5, program 0.*nearest available: \(0, 0\)"):
        sf.render_note(0, 60, 100, 0.1, SR, bank=5)


@pytest.mark.parametrize("program", [0, 73, 48])          # piano, flute, strings
@pytest.mark.parametrize("pitch", [60, 69, 72])
def test_pitch_matches_equal_temperament(sf, program, pitch):
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    x = sf.render_note(program, pitch, 100, 1.0, SR)[int(0.1 * SR):int(0.9 * SR)]
    n_fft = 1 << 18                                        # 0.06 Hz bins by zero-padding
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n_fft))
    freqs = np.fft.rfftfreq(n_fft, 1 / SR)

    def peak(lo, hi):
        band = (freqs > lo) & (freqs < hi)
        k = np.argmax(spec[band])
        return freqs[band][k], spec[band][k]

    # The strongest peak within half a semitone of f0 is the fundamental, within 1.5 %, and
    # it is a real partial (not leakage); nothing sounds an octave below (no octave error).
    f, a = peak(f0 * 0.97, f0 * 1.03)
    assert abs(f / f0 - 1) < 0.015, (f, f0)
    assert a > 0.1 * spec.max()
    assert peak(f0 / 2 * 0.97, f0 / 2 * 1.03)[1] < 0.1 * a


def test_loop_sustains_and_release_decays(sf):
    x = sf.render_note(73, 72, 100, 3.0, SR)                # the flute's sample lasts ~0.6 s
    rms = frame_rms(x, SR // 20)                            # 50 ms frames
    hold = frame_rms(x[int(2.2 * SR):3 * SR], SR // 20)
    assert hold.min() > 0.1 * rms.max()                     # still sounding at 2.2..3 s
    assert len(x) > 3 * SR                                  # a release tail follows
    assert rms[-1] < 0.01 * hold.mean()                     # and dies away
    assert np.isfinite(x).all() and np.abs(x).max() < 1


def test_velocity_follows_the_default_modulator(sf):
    # 960 cB times the concave curve of 1 - v/127 is amplitude (v/127)**2 (SF2 sec. 8.4.1).
    loud, soft = (sf.render_note(0, 60, v, 0.5, SR) for v in (100, 40))
    assert np.sqrt((loud ** 2).mean()) > 2 * np.sqrt((soft ** 2).mean())
    np.testing.assert_allclose(loud, soft * (100 / 40) ** 2, atol=1e-6)


def test_drum_kit_hits(sf):
    for key in (36, 38, 42):                                # kick, snare, closed hi-hat
        x = sf.render_note(0, key, 110, 0.2, SR, bank=128)
        assert 0.01 < np.abs(x).max() < 1


def test_render_is_deterministic_and_mixes(sf):
    notes = [(0, 0, 60, 100, 0.0, 0.5), (0, 0, 64, 90, 0.5, 1.0), (0, 33, 36, 100, 0.0, 1.0),
             (128, 0, 36, 110, 0.0, 0.1), (128, 0, 42, 80, 0.25, 0.35)]
    a, b = sf.render(notes, SR, duration=1.5), sf.render(notes, SR, duration=1.5)
    assert a.dtype == np.float32 and len(a) == int(1.5 * SR)
    assert np.array_equal(a, b) and np.isfinite(a).all() and np.abs(a).max() > 0.01
    keys = ("bank", "program", "pitch", "velocity", "start", "end")
    assert np.array_equal(sf.render([dict(zip(keys, n)) for n in notes], SR, duration=1.5), a)
    # One note alone is render_note placed at its start; without `duration` the tail stays.
    one = sf.render([(0, 0, 60, 100, 0.25, 0.75)], SR)
    note = sf.render_note(0, 60, 100, 0.5, SR)
    assert len(one) == SR // 4 + len(note) and np.array_equal(one[SR // 4:], note)


def test_lowpass_matches_butterworth():
    # RBJ's low-pass with Q = 1/sqrt(2) is the bilinear (prewarped) 2nd-order Butterworth.
    x = np.random.default_rng(0).standard_normal(4000).astype(np.float32)
    cents = 7000.0                                          # a multiple of FC_STEP
    y = soundfont._lowpass(x, np.full(len(x), cents), 1 / np.sqrt(2), SR)
    b, a = butter(2, 8.176 * 2 ** (cents / 1200), fs=SR)
    np.testing.assert_allclose(y, lfilter(b, a, x), atol=1e-4)


# ------------------------------------------------------------------ a tiny SoundFont by hand
def _chunk(cid, data):
    return cid + struct.pack("<I", len(data)) + data + b"\0" * (len(data) & 1)


def _records(fmt, rows):
    return b"".join(struct.pack(fmt, *row) for row in rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 440 Hz sine stored as a linked stereo pair (rate 22000 Hz: 50 samples a period,
    loop of 20 periods). Instrument: a global zone (60 cB, looped, decay 0.5 s per 100 dB to a
    100 cB sustain, release 1 s per 100 dB) + one zone per half. Preset (0, 0) adds +12
    semitones in its global zone; preset (0, 1) plays keys 60..70 only."""
    n, rate = 2000, 22000
    tone = np.round(16384 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype("<i2")
    gap = np.zeros(46, "<i2")                               # the spec's 46 zeros per sample
    smpl = np.concatenate([tone, gap, tone, gap]).tobytes()
    shdr = _records("<20sIIIIIBbHH", [(b"L", 0, n, 1000, n, rate, 69, 0, 1, 4),
                                       (b"R", n + 46, 2 * n + 46, n + 1046, 2 * n + 46,
                                        rate, 69, 0, 0, 2),
                                       (b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0)])
    igen = _records("<Hh", [(36, -1200), (37, 100), (38, 0), (48, 60), (54, 1),
                            (53, 0), (53, 1), (0, 0)])
    ibag = _records("<HH", [(0, 0), (5, 0), (6, 0), (7, 0)])
    inst = _records("<20sH", [(b"Tone", 0), (b"EOI", 3)])
    pgen = _records("<Hh", [(51, 12), (41, 0), (43, 60 | 70 << 8), (41, 0), (0, 0)])
    pbag = _records("<HH", [(0, 0), (1, 0), (2, 0), (4, 0)])
    phdr = _records("<20sHHHIII", [(b"Up", 0, 0, 0, 0, 0, 0), (b"Ranged", 1, 0, 2, 0, 0, 0),
                                    (b"EOP", 0, 0, 3, 0, 0, 0)])
    mod = bytes(10)                                         # terminal modulator records
    pdta = b"".join(_chunk(c, d) for c, d in [(b"phdr", phdr), (b"pbag", pbag), (b"pmod", mod),
                                              (b"pgen", pgen), (b"inst", inst), (b"ibag", ibag),
                                              (b"imod", mod), (b"igen", igen), (b"shdr", shdr)])
    body = (b"sfbk" + _chunk(b"LIST", b"INFO" + _chunk(b"ifil", struct.pack("<HH", 2, 1)))
            + _chunk(b"LIST", b"sdta" + _chunk(b"smpl", smpl)) + _chunk(b"LIST", b"pdta" + pdta))
    path = tmp_path_factory.mktemp("sf2") / "tiny.sf2"
    path.write_bytes(_chunk(b"RIFF", body))
    return SoundFont(path)


def test_generator_model_on_a_known_font(tiny):
    assert tiny.presets == [(0, 0, "Up"), (0, 1, "Ranged")]
    # Preset coarse tune +12 on the instrument's root 69: exactly 880 Hz, i.e. every other
    # stored sample, so the looped output is the stored sine with no seam. Gain: 60 cB from
    # the instrument's global zone and 100 cB of sustain (reached 2 + 50 ms after the onset);
    # the stereo halves share the output (0.5 each).
    x = tiny.render_note(0, 69, 127, 1.0, 22000)
    k = np.arange(1320, 22000)                              # 60 ms .. note-off
    want = 10 ** (-160 / 200) * np.round(16384 * np.sin(2 * np.pi * 880 * k / 22000)) / 32768
    np.testing.assert_allclose(x[k], want, atol=1e-5)
    # Envelope in dB: 25 ms into the decay it is 50 cB above the sustain; 0.2 s after note-off
    # it is 200 cB below; the tail ends 100 dB down (0.9 s more from 100 cB).
    rms = frame_rms(x, 25)                                  # one 880 Hz period per frame
    hold = rms[100:800].mean()
    assert rms[int(0.027 * 880)] / hold == pytest.approx(10 ** (50 / 200), rel=0.03)
    assert rms[int(1.2 * 880)] / hold == pytest.approx(10 ** (-200 / 200), rel=0.03)
    assert len(x) == 22000 + round(0.9 * 22000)
    # The preset's key range intersects the instrument's: key 75 is silent, key 69 is 440 Hz.
    assert not tiny.render_note(1, 75, 127, 0.5, 22000).any()
    y = tiny.render_note(1, 69, 127, 0.5, 22000)[1000:10000]
    assert np.argmax(np.abs(np.fft.rfft(y))) * 22000 / len(y) == pytest.approx(440, abs=3)
