"""The built-in dataset's music: seeded compositions, and their arrangement in each style.

A piece is a score (note events), composed once from a seed; every style plays the same
notes, arranged for its own family of instruments with its own accompaniment rhythm. The
renderer (data.py, soundfont.py) turns an arrangement into audio.

    compose(seed, seconds) -> {tonic, mode, tempo, meter, ..., events: [{role, pitch, start,
                               end, velocity}]}                       roles: melody, counter,
                                                                      chord, bass
    orchestrate(seed, style, soundfonts) -> {part: (soundfont, bank, program)} + textures
    arrange(piece, style, seconds, orchestration) -> {part: [(bank, program, pitch, velocity,
                                                              start, end)]}
"""
import numpy as np

# ---------------------------------------------------------------- composition
MODES = {"major": [0, 2, 4, 5, 7, 9, 11], "minor": [0, 2, 3, 5, 7, 8, 10],
         "dorian": [0, 2, 3, 5, 7, 9, 10], "mixolydian": [0, 2, 4, 5, 7, 9, 10]}
# Chord progressions as 0-based scale degrees, one chord a bar (I-V-vi-IV and friends).
PROGRESSIONS = [[0, 4, 5, 3], [5, 3, 0, 4], [0, 5, 3, 4], [1, 4, 0, 5],
                [0, 3, 4, 3], [0, 3, 5, 4], [5, 4, 3, 4], [0, 2, 3, 4],
                [0, 6, 3, 0], [0, 3, 0, 4], [5, 1, 4, 0], [0, 4, 3, 3]]
# Chord shapes as scale steps above the root: triad, seventh, add-ninth, seventh + ninth.
# With the bass, a piece's harmony has 4 to 6 voices.
CHORDS = [(0, 2, 4), (0, 2, 4, 6), (0, 2, 4, 8), (0, 2, 4, 6, 8)]
# Melody rhythms for one bar, in eighth notes (4/4: 8 eighths, 3/4: 6).
RHYTHMS = {4: [[2, 2, 2, 2], [3, 1, 2, 2], [1, 1, 2, 4], [2, 1, 1, 4], [4, 2, 2], [2, 2, 4],
               [1, 1, 1, 1, 2, 2], [3, 1, 3, 1], [2, 2, 1, 1, 2], [8], [1, 1, 1, 1, 1, 1, 2]],
           3: [[2, 2, 2], [3, 1, 2], [4, 2], [2, 4], [1, 1, 2, 2], [6], [2, 1, 1, 2],
               [1, 1, 1, 1, 2]]}
REGISTERS = [(55, 74), (62, 81), (67, 88)]      # low, middle and high melodies (MIDI)
REST = 0.1                                      # chance that a melody note is a rest


def _scale_pitches(tonic, steps, lo, hi):
    return [p for p in range(lo, hi + 1) if (p - tonic) % 12 in steps]


def compose(seed, seconds=12.0):
    """A seeded piece: key and mode, tempo 60-180, 3/4 or 4/4, a looping progression of
    triads and seventh / ninth chords, a melody in one of three registers with rests, an
    optional counter-melody, a bass, and dynamics (accents, a crescendo or diminuendo).

    Returns a dict of the musical facts and `events`, a list of {role, pitch, start, end,
    velocity} in seconds; every style plays these same notes.
    """
    rng = np.random.default_rng(seed)
    tonic = int(rng.integers(12))
    mode = list(MODES)[int(rng.choice(4, p=[0.35, 0.35, 0.15, 0.15]))]
    steps = MODES[mode]
    tempo = float(rng.uniform(60, 180))
    meter = 3 if rng.random() < 0.3 else 4
    beat = 60.0 / tempo
    bar_len = meter * beat
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    shape = CHORDS[int(rng.integers(len(CHORDS)))]
    lo, hi = REGISTERS[int(rng.integers(len(REGISTERS)))]
    melody_range = _scale_pitches(tonic, steps, lo, hi)
    counter = rng.random() < 0.35
    counter_range = _scale_pitches(tonic, steps, lo - 12, lo + 4)
    level = float(rng.uniform(60, 105))                  # the piece's dynamic level
    swell = float(rng.choice([-1.0, 0.0, 1.0])) * rng.uniform(10, 25)   # dim., none, cresc.

    def velocity(t, accent=0.0):
        v = level + swell * (t / seconds - 0.5) + accent + rng.uniform(-4, 4)
        return int(np.clip(round(v), 30, 127))

    n_bars = int(np.ceil(seconds / bar_len))
    events, pitch, low = [], int(rng.choice(melody_range[3:-3])), None
    for bar in range(n_bars):
        degree = progression[bar % len(progression)]
        t0 = bar * bar_len
        pcs = [(tonic + steps[(degree + k) % 7]) % 12 for k in shape]
        root = 48 + (pcs[0] - 48) % 12                       # C3..B3
        chord = [root] + [root + (pc - pcs[0]) % 12 for pc in pcs[1:]]
        chord = [p + 12 if k >= 3 and p < chord[2] else p for k, p in enumerate(chord)]
        for p in chord:
            events.append(dict(role="chord", pitch=p, start=t0, end=t0 + bar_len,
                               velocity=velocity(t0, -12)))
        bass = 36 + (pcs[0] - 36) % 12                       # C2..B2
        fifth = bass + 7 if bass + 7 <= 50 else bass - 5
        first = (meter + 1) // 2                             # root, then the fifth
        for p, a, b in ((bass, 0, first), (fifth, first, meter)):
            events.append(dict(role="bass", pitch=p, start=t0 + a * beat, end=t0 + b * beat,
                               velocity=velocity(t0, 0)))
        if counter:                                          # one chord tone a bar, held
            tones = [p for p in counter_range if p % 12 in pcs]
            low = min(tones, key=lambda p: abs(p - (low or tones[len(tones) // 2]))
                      + rng.uniform(0, 3))
            events.append(dict(role="counter", pitch=int(low), start=t0, end=t0 + bar_len,
                               velocity=velocity(t0, -6)))
        # Melody: chord tones on the beat, scale steps (passing notes) between, some rests.
        t, rests = t0, rng.random() < 0.08                   # now and then a bar's rest
        for eighths in RHYTHMS[meter][int(rng.integers(len(RHYTHMS[meter])))]:
            dur = eighths * beat / 2
            if rests or (events and rng.random() < REST):
                t += dur
                continue
            on_beat = abs((t - t0) / beat - round((t - t0) / beat)) < 1e-6
            if on_beat:
                tones = [p for p in melody_range if p % 12 in pcs]
                pitch = min(tones, key=lambda p: abs(p - pitch) + rng.uniform(0, 5))
            else:
                i = melody_range.index(pitch) if pitch in melody_range else len(melody_range) // 2
                i = int(np.clip(i + rng.choice([-1, 1]), 0, len(melody_range) - 1))
                pitch = melody_range[i]
            accent = 12 if abs(t - t0) < 1e-6 else 0         # downbeats are accented
            events.append(dict(role="melody", pitch=int(pitch), start=t, end=t + dur,
                               velocity=velocity(t, accent)))
            t += dur
    events = [dict(e, start=round(e["start"], 4), end=round(min(e["end"], seconds), 4))
              for e in events if e["start"] < seconds - 1e-3]
    return dict(tonic=tonic, mode=mode, tempo=tempo, meter=meter, progression=progression,
                chord=list(shape), register=[lo, hi], counter=counter, events=events)


# ---------------------------------------------------------------- orchestration
# Each style: a family of General MIDI programs (bank 0) per part, the textures its
# accompaniment may take, and drum kits (bank 128) or none. Same melody and harmony
# everywhere; the instruments and the accompaniment's rhythm are the style's own.
STYLES = {
    "piano": dict(melody=[0, 1, 2], counter=[0, 1], chords=[0, 1, 2], bass=[0, 1],
                  chord_textures=["block", "arpeggio"], bass_textures=["as_written"],
                  drums=None),
    "strings": dict(melody=[40, 41, 48, 49], counter=[42, 41, 48], chords=[48, 49, 44, 45],
                    bass=[42, 43, 45], chord_textures=["sustain", "sustain", "arpeggio"],
                    bass_textures=["as_written"], drums=None),
    "guitar": dict(melody=[24, 25, 26, 27], counter=[24, 25], chords=[24, 25, 26, 27],
                   bass=[32, 33], chord_textures=["arpeggio", "block"],
                   bass_textures=["as_written"], drums=None),
    "flute": dict(melody=[73, 72, 74, 75], counter=[71, 68, 73], chords=[46, 71, 73],
                  bass=[70, 71], chord_textures=["arpeggio", "sustain"],
                  bass_textures=["as_written"], drums=None),
    "rock": dict(melody=[29, 30], counter=[29, 30, 27], chords=[29, 30], bass=[33, 34, 35],
                 chord_textures=["power"], bass_textures=["eighths", "as_written"],
                 drums=("rock", [0, 8, 16])),
    "electronic": dict(melody=[80, 81, 87, 84], counter=[81, 80, 90], chords=[88, 89, 90, 95],
                       bass=[38, 39, 87], chord_textures=["sustain", "arpeggio"],
                       bass_textures=["offbeat", "eighths"], drums=("electro", [25, 24])),
}
PART_GAIN = {"melody": 1.0, "counter": 0.6, "chords": 0.5, "bass": 0.7, "drums": 0.6}
LEVEL_DB = 3.0          # each part's level varies by up to this much, piece to piece
GM_DRUMS = {"kick": 36, "snare": 38, "clap": 39, "hat": 42, "open_hat": 46, "crash": 49}


def orchestrate(seed, style, soundfonts, weights=None):
    """Choose each part's instrument from the style's family and SoundFont, its texture and
    its level: {part: dict(font, bank, program, gain)} plus chord / bass textures.

    soundfonts: names of the fonts to draw from (weights: their chances), each part its own
    draw, so one mix can hold instruments from several fonts."""
    spec, rng = STYLES[style], np.random.default_rng(seed)
    fonts = list(soundfonts)
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)

    def pick(part, bank, programs):
        return dict(font=fonts[int(rng.choice(len(fonts), p=p))], bank=bank,
                    program=int(rng.choice(programs)),
                    gain=PART_GAIN[part] * 10 ** (rng.uniform(-LEVEL_DB, LEVEL_DB) / 20))

    parts = {part: pick(part, 0, spec[part]) for part in ("melody", "counter", "chords", "bass")}
    if spec["drums"]:
        parts["drums"] = pick("drums", 128, spec["drums"][1])
    return dict(parts=parts, chord_texture=str(rng.choice(spec["chord_textures"])),
                bass_texture=str(rng.choice(spec["bass_textures"])))


# ---------------------------------------------------------------- arrangement
def _subdivide(e, step, offset=0.0, gate=0.9):
    """Repeat an event's pitch every `step` seconds (eighth-note bass, power chords)."""
    t, out = e["start"] + offset, []
    while t < e["end"] - 1e-3:              # 1 ms: event times are rounded to 0.1 ms
        out.append(dict(e, start=t, end=min(t + gate * step, e["end"])))
        t += step
    return out


def _chords(ev, texture, beat, meter):
    """The chord events in a texture: held, stabs, arpeggios or power chords."""
    if texture == "sustain":
        return ev
    by_bar = {}
    for e in ev:
        by_bar.setdefault(e["start"], []).append(e)
    out = []
    for t0, chord in sorted(by_bar.items()):
        tones = sorted(e["pitch"] for e in chord)
        end, vel = max(e["end"] for e in chord), chord[0]["velocity"]
        if texture == "block":              # stabs on the strong beats
            stab = 2 * beat if meter == 4 else meter * beat
            out += [s for e in chord for s in _subdivide(e, stab, gate=0.95)]
        elif texture == "arpeggio":         # chord tones cycled upward in eighths
            tones = tones + [tones[0] + 12]
            for k, step in enumerate(_subdivide(dict(start=t0, end=end), beat / 2, gate=1.5)):
                out.append(dict(step, pitch=tones[k % len(tones)], velocity=vel))
        elif texture == "power":            # root, fifth and octave, palm-muted eighths ...
            low = tones[0] - 12 if tones[0] >= 52 else tones[0]
            # ... with the rest of the chord on top, so the harmony is every style's
            voicing = [low, low + 7, low + 12] + [low + 12 + (p - tones[0]) % 12
                                                  for p in tones[1:] if (p - tones[0]) % 12 != 7]
            for p in voicing:
                out += _subdivide(dict(start=t0, end=end, pitch=p, velocity=vel + 8),
                                  beat / 2, gate=0.8)
    return out


def _bass(ev, texture, beat):
    if texture == "eighths":
        return [s for e in ev for s in _subdivide(e, beat / 2, gate=0.85)]
    if texture == "offbeat":
        return [s for e in ev for s in _subdivide(e, beat, offset=beat / 2, gate=0.4)]
    return ev                               # as written


def _drums(pattern, beat, meter, seconds, kit):
    """Drum hits on a 16th-note grid: a rock beat, or four on the floor with claps."""
    d, hits = GM_DRUMS, []
    per_bar = 4 * meter
    for k in range(int(seconds / (beat / 4))):
        pos = k % per_bar                   # position in the bar, in 16ths
        names = []
        if pattern == "rock":
            names += ["kick"] if pos in (0, 8, 10) or (meter == 3 and pos == 6) else []
            names += ["snare"] if pos in ((4, 12) if meter == 4 else (4, 8)) else []
            names += ["hat"] if pos % 2 == 0 else []
            names += ["crash"] if k % (4 * per_bar) == 0 else []
        else:
            names += ["kick"] if pos % 4 == 0 else []
            names += ["clap"] if pos in ((4, 12) if meter == 4 else (4, 8)) else []
            names += ["open_hat"] if pos % 4 == 2 else ["hat"] if pos % 2 == 1 else []
        t = k * beat / 4
        for name in names:
            vel = 110 if name in ("kick", "snare", "clap", "crash") else 75
            hits.append((128, kit, d[name], vel, t, t + beat / 4))
    return hits


def arrange(piece, style, seconds, orchestration):
    """A piece's events -> {part: [(bank, program, pitch, velocity, start, end)]} in the
    instruments and textures of `orchestration` (from orchestrate)."""
    spec, beat, meter = STYLES[style], 60.0 / piece["tempo"], piece.get("meter", 4)
    inst = orchestration["parts"]
    ev = {r: [e for e in piece["events"] if e["role"] == r]
          for r in ("melody", "counter", "chord", "bass")}
    notes = {"melody": ev["melody"], "counter": ev["counter"],
             "chords": _chords(ev["chord"], orchestration["chord_texture"], beat, meter),
             "bass": _bass(ev["bass"], orchestration["bass_texture"], beat)}
    parts = {part: [(inst[part]["bank"], inst[part]["program"], e["pitch"],
                     int(np.clip(e["velocity"], 1, 127)), e["start"], e["end"]) for e in evs]
             for part, evs in notes.items() if evs}
    if spec["drums"]:
        parts["drums"] = _drums(spec["drums"][0], beat, meter, seconds, inst["drums"]["program"])
    return parts
