"""A minimal SoundFont 2 player, written by hand: the instruments of the built-in dataset.

Follows the SoundFont 2.04 specification (E-mu / Creative Technology, 2006): the RIFF 'sfbk'
layout (sec. 4-7), the preset -> instrument -> sample hierarchy with global zones and
key/velocity ranges (sec. 7.3-7.9, 9.4), the sample header's loop, root key, pitch correction
and rate (sec. 7.10), the generators of sec. 8.1.2 named below, the volume and modulation
envelopes (gens 25-30, 33-38), and the default velocity-to-attenuation modulator (sec. 8.4.1).

    SoundFont().render_note(program, pitch, velocity, duration, sr) -> float32 (N,) mono
    SoundFont().render([(bank, program, pitch, velocity, start, end), ...], sr) -> (N,) mono

Simplified on purpose (mono and offline, for a dataset): the modulator lists (pmod/imod
chunks) are ignored, and of the default modulators only velocity -> attenuation is applied
(TimGM6mb switches off the default velocity -> filter one itself); no LFOs, no modulation
envelope -> pitch, no pan, chorus or reverb; gens 31/32/39/40 (key number -> envelope times),
46/47 (fixed key/velocity) and 57 (exclusive class) are ignored, as is the 24-bit 'sm24'
chunk; resampling is linear interpolation, without an anti-aliasing filter.
"""
import importlib.util
import math
import struct
from collections import defaultdict, namedtuple
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

# Generator numbers (sec. 8.1.2).
START, END, LOOP_START, LOOP_END, START_COARSE = 0, 1, 2, 3, 4
END_COARSE, LOOP_START_COARSE, LOOP_END_COARSE = 12, 45, 50
FILTER_FC, FILTER_Q, MOD_ENV_TO_FC = 8, 9, 11
MOD_ENV = (25, 26, 27, 28, 29, 30)              # delay, attack, hold, decay, sustain, release
VOL_ENV = (33, 34, 35, 36, 37, 38)              # the same for the volume envelope
INSTRUMENT, KEY_RANGE, VEL_RANGE, ATTENUATION = 41, 43, 44, 48
COARSE_TUNE, FINE_TUNE, SAMPLE_ID, SAMPLE_MODES, SCALE_TUNING, ROOT_KEY = 51, 52, 53, 54, 56, 58
# Defaults other than 0 (sec. 8.1.3): envelope times of 1 ms, filter open, the sample's root.
DEFAULTS = {FILTER_FC: 13500, SCALE_TUNING: 100, ROOT_KEY: -1,
            **{k: -12000 for k in MOD_ENV + VOL_ENV if k not in (MOD_ENV[4], VOL_ENV[4])}}
# Generators valid at instrument level only (sec. 8.1.2); every other one found in a preset
# zone is an offset added to the instrument's value (sec. 8.5, 9.4).
INSTRUMENT_ONLY = {START, END, LOOP_START, LOOP_END, START_COARSE, END_COARSE,
                   LOOP_START_COARSE, LOOP_END_COARSE, INSTRUMENT, KEY_RANGE, VEL_RANGE,
                   46, 47, SAMPLE_ID, SAMPLE_MODES, 57, ROOT_KEY}
MAX_TAIL = 2.0      # seconds of release kept after note-off
FC_STEP = 50.0      # cents the filter cutoff may move before the biquad is redesigned
FADE = 0.01         # seconds of linear fade at the very end, so a capped tail never clicks

Sample = namedtuple("Sample", "name start end loop_start loop_end rate root correction link kind")
Region = namedtuple("Region", "keys vels sample gens")   # one instrument zone inside a preset


def default_path():
    """The General MIDI SoundFont shipped with pretty_midi, found without importing it."""
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None:
        raise ValueError("pretty_midi is not installed: pip install pretty_midi, "
                         "or pass the path of a .sf2 file")
    return Path(list(spec.submodule_search_locations)[0]) / "TimGM6mb.sf2"


def _chunks(buf, offset, end):
    """(id, data offset, size) of the RIFF chunks in buf[offset:end]; chunks are word aligned."""
    while offset + 8 <= end:
        cid, size = struct.unpack_from("<4sI", buf, offset)
        yield cid, offset + 8, size
        offset += 8 + size + (size & 1)


def _zones(bags, gens, first, last):
    """Generator dicts of zones first..last-1; a zone's generators end where the next begins."""
    zones = []
    for b in range(first, last):
        zone = {}
        for oper, amount in gens[bags[b][0]:bags[b + 1][0]]:
            if oper in (KEY_RANGE, VEL_RANGE):          # two bytes: lo, hi
                zone[oper] = (amount & 0xFF, (amount >> 8) & 0xFF)
            else:                                        # ids are unsigned, the rest signed
                zone[oper] = amount & 0xFFFF if oper in (INSTRUMENT, SAMPLE_ID) else amount
        zones.append(zone)
    return zones


def _split_global(zones, terminal):
    """(global zone, local zones): a first zone without the terminal generator is global
    (sec. 7.3, 7.7); any later zone without it is ignored."""
    glob = zones[0] if zones and terminal not in zones[0] else {}
    return glob, [z for z in zones if terminal in z]


def _name(raw):
    return raw.split(b"\0")[0].decode("latin-1").strip()


def _intersect(a, b):
    return max(a[0], b[0]), min(a[1], b[1])


def _seconds(timecents):
    return 2.0 ** (min(max(timecents, -12000), 8000) / 1200.0)


def _volume_envelope(t, t_off, delay, attack, hold, decay, sustain_cb, release):
    """Volume envelope (sec. 8.1.2 gens 33-38) as an amplitude: linear attack 0 -> 1, hold, then
    down 100 dB per `decay` s (linear in dB) to `sustain_cb`; from note-off (t_off), down
    100 dB per `release` s from wherever it was."""
    x = np.minimum(t, t_off) - delay
    cb = (np.minimum(np.maximum(x - attack - hold, 0.0) / decay * 1000, sustain_cb)
          + np.maximum(t - t_off, 0.0) / release * 1000)
    return np.clip(x / attack, 0.0, 1.0) * np.exp(cb * (-math.log(10) / 200))  # 10**(-cb/200)


def _mod_envelope(t, t_off, delay, attack, hold, decay, sustain, release):
    """Modulation envelope (sec. 8.1.2 gens 25-30): linear 0 -> 1 in `attack`, hold, down 100 %
    per `decay` s to `sustain`; after note-off down 100 % per `release` s."""
    x = np.minimum(t, t_off) - delay
    level = np.where(x < attack, np.clip(x / attack, 0.0, 1.0),
                     np.maximum(1 - np.maximum(x - attack - hold, 0.0) / decay, sustain))
    return np.maximum(level - np.maximum(t - t_off, 0.0) / release, 0.0)


def _wrap(pos, loop_start, loop_end):
    """Read positions past the loop end fold back into [loop_start, loop_end)."""
    length = loop_end - loop_start
    folded = pos - length * np.floor((pos - loop_start) / length)    # a fast np.mod
    return np.where(pos >= loop_end, folded, pos)


def _lowpass(x, cutoff_cents, q, sample_rate):
    """Biquad low-pass (RBJ Audio EQ Cookbook) whose cutoff, in cents per sample, may move.

    A recursive filter cannot be vectorised over time, so the coefficients are redesigned only
    where the cutoff has moved by FC_STEP cents, carrying the state over (as synthesisers update
    filters once per block); a decaying envelope gives a few dozen segments per note."""
    steps = np.round(cutoff_cents / FC_STEP)
    bounds = np.r_[0, np.flatnonzero(np.diff(steps)) + 1, len(x)]
    y, state = np.empty_like(x), np.zeros(2)
    for i, j in zip(bounds[:-1], bounds[1:]):
        w = 2 * np.pi * 8.176 * 2.0 ** (steps[i] * FC_STEP / 1200) / sample_rate
        alpha, cos = np.sin(w) / (2 * q), np.cos(w)
        b = np.array([(1 - cos) / 2, 1 - cos, (1 - cos) / 2])
        a = np.array([1 + alpha, -2 * cos, 1 - alpha])
        y[i:j], state = lfilter(b / a[0], a / a[0], x[i:j], zi=state)
    return y


class SoundFont:
    """A parsed .sf2 file; renders notes of its presets to mono float32 audio."""

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else default_path()
        try:
            buf = self.path.read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read SoundFont {self.path}: {e.strerror}; "
                             "pass the path of a .sf2 file") from None
        if len(buf) < 12 or buf[:4] != b"RIFF" or buf[8:12] != b"sfbk":
            raise ValueError(f"{self.path} is not a SoundFont 2 file (no RIFF 'sfbk' header); "
                             "pass the path of a .sf2 file")
        lists = {}
        for cid, off, size in _chunks(buf, 12, len(buf)):
            if cid == b"LIST":
                lists[buf[off:off + 4]] = {c: buf[o:o + s] for c, o, s
                                           in _chunks(buf, off + 4, off + size)}
        try:
            sdta, pdta = lists[b"sdta"], lists[b"pdta"]
            # 16-bit little-endian PCM of every sample, back to back (sec. 6.1).
            self.data = np.frombuffer(sdta[b"smpl"], "<i2").astype(np.float32) / 32768
            # The 'hydra' (sec. 7.2-7.10): fixed-size records, each list ending in a terminal one.
            phdr, pbag, pgen, inst, ibag, igen, shdr = (
                list(struct.iter_unpack(fmt, pdta[cid])) for cid, fmt in
                [(b"phdr", "<20sHHHIII"), (b"pbag", "<HH"), (b"pgen", "<Hh"), (b"inst", "<20sH"),
                 (b"ibag", "<HH"), (b"igen", "<Hh"), (b"shdr", "<20sIIIIIBbHH")])
        except (KeyError, struct.error) as e:
            raise ValueError(f"{self.path} is a damaged SoundFont 2 file ({e})") from None

        self.samples = [Sample(_name(s[0]), *s[1:]) for s in shdr[:-1]]  # last is 'EOS'
        instruments = [_split_global(_zones(ibag, igen, inst[i][1], inst[i + 1][1]), SAMPLE_ID)
                       for i in range(len(inst) - 1)]                    # last is 'EOI'
        self._presets = {}
        for i in range(len(phdr) - 1):                                   # last is 'EOP'
            pname, program, bank, bag0 = phdr[i][:4]
            pglob, pzones = _split_global(_zones(pbag, pgen, bag0, phdr[i + 1][3]), INSTRUMENT)
            regions = []
            for pz in pzones:
                p = {**pglob, **pz}
                iglob, izones = instruments[p[INSTRUMENT]]
                for iz in izones:
                    g = {**iglob, **iz}
                    # Key and velocity ranges of both levels must match (sec. 9.4).
                    keys = _intersect(p.get(KEY_RANGE, (0, 127)), g.get(KEY_RANGE, (0, 127)))
                    vels = _intersect(p.get(VEL_RANGE, (0, 127)), g.get(VEL_RANGE, (0, 127)))
                    if keys[0] > keys[1] or vels[0] > vels[1]:
                        continue
                    gens = defaultdict(int, {**DEFAULTS, **g})
                    for oper, amount in p.items():           # preset values are offsets
                        if oper not in INSTRUMENT_ONLY:
                            gens[oper] += amount
                    regions.append(Region(keys, vels, g[SAMPLE_ID], gens))
            self._presets.setdefault((bank, program), (_name(pname), regions))

    @property
    def presets(self):
        """Sorted [(bank, program, name)]; bank 128 holds the percussion kits."""
        return sorted((b, p, n) for (b, p), (n, _) in self._presets.items())

    def has_preset(self, bank, program):
        return (bank, program) in self._presets

    def _regions(self, bank, program):
        if (bank, program) not in self._presets:
            near = sorted(self.presets, key=lambda x: (abs(x[0] - bank), abs(x[1] - program)))[:3]
            near = ", ".join(f"({b}, {p}) {n!r}" for b, p, n in near)
            raise ValueError(f"no preset (bank {bank}, program {program}) in {self.path.name}; "
                             f"nearest available: {near}")
        return self._presets[(bank, program)][1]

    def render_note(self, program, pitch, velocity, duration, sample_rate, bank=0):
        """One note held `duration` s then released -> float32 (duration + tail) * sr, mono.

        Every zone whose key and velocity ranges contain the note sounds (layers add up);
        the tail is the release time, at most MAX_TAIL s."""
        regions = self._regions(bank, program)
        n_hold = int(round(duration * sample_rate))
        hits = [r for r in regions if r.keys[0] <= pitch <= r.keys[1]
                and r.vels[0] <= velocity <= r.vels[1]
                and not self.samples[r.sample].kind & 0x8000]      # ROM samples are not here
        ids = {r.sample for r in hits}
        voices = []
        for r in hits:
            s = self.samples[r.sample]
            # The two halves of a stereo pair (type 2 right, 4 left) share the mono output.
            weight = 0.5 if s.kind & 6 and s.link in ids else 1.0
            voices.append(weight * self._voice(r, s, pitch, velocity, n_hold, sample_rate))
        out = np.zeros(max([n_hold] + [len(v) for v in voices]), np.float32)
        for v in voices:
            out[:len(v)] += v
        return out

    def _voice(self, region, s, pitch, velocity, n_hold, sample_rate):
        """One zone's sample, pitched, looped, enveloped and filtered -> float32 (N,)."""
        g = region.gens
        # Pitch (gens 51, 52, 56, 58; sec. 7.10 pitch correction) as a read step through the
        # stored sample, at the sample's own rate.
        root = g[ROOT_KEY] if g[ROOT_KEY] >= 0 else s.root
        semitones = ((pitch - root) * g[SCALE_TUNING] / 100 + g[COARSE_TUNE]
                     + (g[FINE_TUNE] + s.correction) / 100)
        step = 2.0 ** (semitones / 12) * s.rate / sample_rate
        start = s.start + g[START] + 32768 * g[START_COARSE]
        end = s.end + g[END] + 32768 * g[END_COARSE]             # one past the last sample
        loop_start = s.loop_start + g[LOOP_START] + 32768 * g[LOOP_START_COARSE]
        loop_end = s.loop_end + g[LOOP_END] + 32768 * g[LOOP_END_COARSE]
        mode = g[SAMPLE_MODES] & 3
        looping = mode in (1, 3) and start <= loop_start < loop_end <= end

        # Volume envelope; the voice ends when the release is 100 dB down (1000 cB), after
        # MAX_TAIL s, or when an unlooped sample runs out.
        t_off = n_hold / sample_rate
        vol = (*(_seconds(g[k]) for k in VOL_ENV[:4]), min(max(g[VOL_ENV[4]], 0), 1000),
               _seconds(g[VOL_ENV[5]]))
        cb_off = -200 * math.log10(max(float(_volume_envelope(t_off, t_off, *vol)), 1e-5))
        tail = min(max(vol[-1] * (1000 - cb_off) / 1000, 0.0), MAX_TAIL)
        n = n_hold + math.ceil(tail * sample_rate)
        if not looping:
            n = min(n, math.ceil((end - start) / step))
        t = np.arange(n, dtype=np.float32) / np.float32(sample_rate)   # (N,) seconds
        env = _volume_envelope(t, t_off, *vol)
        n_fade = min(int(FADE * sample_rate), n)
        env[n - n_fade:] *= np.linspace(1, 0, n_fade)

        # Read positions (N,): mode 1 loops for ever; mode 3 loops while the key is held,
        # then plays on to the end of the sample (gen 54).
        pos = start + np.arange(n) * step
        if looping:
            held = n if mode == 1 else n_hold
            pos[:held] = _wrap(pos[:held], loop_start, loop_end)
            if held < n:
                resume = _wrap(start + held * step, loop_start, loop_end)
                pos[held:] = resume + np.arange(n - held) * step
        i0 = pos.astype(np.int64)
        frac = (pos - i0).astype(np.float32)
        i1 = i0 + 1
        if looping:                     # the sample after the loop's last one is its first
            i1[:held] = np.where(i1[:held] == loop_end, loop_start, i1[:held])
        sounding = (i0 >= start) & (i0 < end)
        i0, i1 = (np.clip(i, 0, len(self.data) - 1) for i in (i0, i1))
        wave = (self.data[i0] * (1 - frac) + self.data[i1] * frac) * sounding   # linear interp.

        # Low-pass filter (gens 8, 9), opened by the modulation envelope (gen 11), which this
        # font uses in most instruments for a bright attack that mellows.
        cutoff = np.full(n, float(g[FILTER_FC]), np.float32)              # (N,) cents
        if g[MOD_ENV_TO_FC]:
            mod = (*(_seconds(g[k]) for k in MOD_ENV[:4]),           # sustain in 0.1 %
                   1 - min(max(g[MOD_ENV[4]], 0), 1000) / 1000, _seconds(g[MOD_ENV[5]]))
            cutoff += g[MOD_ENV_TO_FC] * _mod_envelope(t, t_off, *mod)
        limit = 1200 * math.log2(min(12000.0, 0.45 * sample_rate) / 8.176)   # Hz -> cents
        cutoff = np.minimum(cutoff, limit)
        if n and cutoff.min() < limit:
            # Q in cB is the resonance peak over the DC gain; 0 cB is the flat 1/sqrt(2).
            q = 10.0 ** (min(max(g[FILTER_Q], 0), 960) / 200) / math.sqrt(2)
            wave = _lowpass(wave, cutoff, q, sample_rate)
        # Gain: initialAttenuation in cB, plus the default velocity modulator: 960 cB times
        # the concave curve of 1 - vel/127, which is exactly amplitude (vel/127)**2 (sec. 8.4.1).
        gain = 10.0 ** (-min(max(g[ATTENUATION], 0), 1440) / 200) * (velocity / 127) ** 2
        return (gain * env * wave).astype(np.float32)

    def render(self, notes, sample_rate, duration=None):
        """Mix notes, tuples (bank, program, pitch, velocity, start, end) in seconds or dicts
        with those keys, -> float32 (N,); N = duration * sr if given, else the last tail's end."""
        cache, placed = {}, []
        for note in notes:
            if isinstance(note, dict):
                note = tuple(note.get(k, 0) for k in
                             ("bank", "program", "pitch", "velocity", "start", "end"))
            bank, program, pitch, velocity, start, end = note
            n_hold = int(round((end - start) * sample_rate))
            key = (bank, program, pitch, velocity, n_hold)     # repeated notes render once
            if key not in cache:
                cache[key] = self.render_note(program, pitch, velocity, n_hold / sample_rate,
                                              sample_rate, bank)
            placed.append((int(round(start * sample_rate)), cache[key]))
        n = (int(round(duration * sample_rate)) if duration is not None
             else max([i + len(w) for i, w in placed], default=0))
        mix = np.zeros(n, np.float32)
        for i, wave in placed:
            if i < n:
                mix[i:i + len(wave)] += wave[:n - i]
        return mix
