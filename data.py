"""Data: the built-in multi-style dataset, and folders of the user's own music.

Real music cannot be downloaded here, so the project composes its own pieces and renders
each one in every style with the real sampled instruments of a General MIDI SoundFont
(soundfont.py). The test split is therefore *paired*: "piece P in style T" exists, so a
transfer can be scored against its ground truth (the paper could only run listening tests).

    compose(seed)  -> note events (melody, chords, bass)         the music, kept as data
    arrange(piece, style) -> (bank, program, pitch, vel, start, end) per part
    render_piece   -> float32 wave (N,) at 16 kHz                   one piece in one style
    AudioFolder(ROOT/<style>/*.wav) -> (wave (N,), style index)     training / evaluation clips
"""
import json
import os
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

AUDIO_EXTS = (".wav", ".flac", ".ogg")
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------- composition
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 10]
# Chord progressions as 0-based scale degrees, one chord a bar (I-V-vi-IV and friends).
PROGRESSIONS = [[0, 4, 5, 3], [5, 3, 0, 4], [0, 5, 3, 4], [1, 4, 0, 5],
                [0, 3, 4, 3], [0, 3, 5, 4], [5, 4, 3, 4], [0, 2, 3, 4]]
# Melody rhythms for one 4/4 bar, in eighth notes.
RHYTHMS = [[2, 2, 2, 2], [3, 1, 2, 2], [1, 1, 2, 4], [2, 1, 1, 4], [4, 2, 2],
           [2, 2, 4], [1, 1, 1, 1, 2, 2], [3, 1, 3, 1], [2, 2, 1, 1, 2]]


def _scale_pitches(tonic, mode, lo, hi):
    steps = MAJOR if mode == "major" else MINOR
    return [p for p in range(lo, hi + 1) if (p - tonic) % 12 in steps]


def compose(seed, seconds=12.0):
    """A seeded piece: key, tempo, a looping progression, melody, block chords and bass.

    Returns a dict with the musical facts and `events`, a list of
    {role, pitch, start, end, velocity} in seconds; every style plays these same notes.
    """
    rng = np.random.default_rng(seed)
    tonic, mode = int(rng.integers(12)), ("major", "minor")[int(rng.integers(2))]
    tempo = float(rng.uniform(88, 132))
    beat = 60.0 / tempo
    steps = MAJOR if mode == "major" else MINOR
    progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
    n_bars = int(np.ceil(seconds / (4 * beat)))
    melody_range = _scale_pitches(tonic, mode, 64, 84)      # E4..C6
    events, pitch = [], int(rng.choice(melody_range[5:-5]))
    for bar in range(n_bars):
        degree = progression[bar % len(progression)]
        t0 = bar * 4 * beat
        # Triad on the degree, stacked in thirds within the scale.
        pcs = [(tonic + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4)]
        root = 48 + (pcs[0] - 48) % 12                       # C3..B3
        chord = [root] + [root + (pc - pcs[0]) % 12 for pc in pcs[1:]]
        for p in chord:
            events.append(dict(role="chord", pitch=p, start=t0, end=t0 + 4 * beat, velocity=70))
        bass = 36 + (pcs[0] - 36) % 12                       # C2..B2
        fifth = bass + 7 if bass + 7 <= 50 else bass - 5
        for k, p in enumerate((bass, fifth)):
            events.append(dict(role="bass", pitch=p, start=t0 + 2 * k * beat,
                               end=t0 + 2 * (k + 1) * beat, velocity=90))
        # Melody: chord tones on the beat, scale steps (passing notes) between.
        t = t0
        for eighths in RHYTHMS[int(rng.integers(len(RHYTHMS)))]:
            on_beat = abs((t - t0) / beat - round((t - t0) / beat)) < 1e-6
            if on_beat:
                tones = [p for p in melody_range if p % 12 in pcs]
                pitch = min(tones, key=lambda p: abs(p - pitch) + rng.uniform(0, 5))
            else:
                i = melody_range.index(pitch) if pitch in melody_range else len(melody_range) // 2
                i = int(np.clip(i + rng.choice([-1, 1]), 0, len(melody_range) - 1))
                pitch = melody_range[i]
            dur = eighths * beat / 2
            events.append(dict(role="melody", pitch=int(pitch), start=t, end=t + dur,
                               velocity=int(rng.integers(86, 106))))
            t += dur
    events = [dict(e, start=round(e["start"], 4), end=round(min(e["end"], seconds), 4))
              for e in events if e["start"] < seconds]
    return dict(tonic=tonic, mode=mode, tempo=tempo, progression=progression,
                events=events)


# ---------------------------------------------------------------- arrangement
# Each style: (bank, program) per part, the texture of the chords and bass, and drums.
# Same melody and harmony everywhere; the accompaniment's rhythm is the style's own.
STYLES = {
    "piano":      dict(melody=(0, 0), chords=(0, 0, "block"), bass=(0, 0, "as_written"),
                       drums=None),
    "strings":    dict(melody=(0, 40), chords=(0, 48, "sustain"), bass=(0, 42, "as_written"),
                       drums=None),
    "guitar":     dict(melody=(0, 25), chords=(0, 24, "arpeggio"), bass=(0, 32, "as_written"),
                       drums=None),
    "flute":      dict(melody=(0, 73), chords=(0, 46, "arpeggio"), bass=(0, 70, "as_written"),
                       drums=None),
    "rock":       dict(melody=(0, 29), chords=(0, 30, "power"), bass=(0, 34, "eighths"),
                       drums="rock"),
    "electronic": dict(melody=(0, 81), chords=(0, 89, "sustain"), bass=(0, 38, "offbeat"),
                       drums="electro"),
}
PART_GAIN = {"melody": 1.0, "chords": 0.5, "bass": 0.7, "drums": 0.6}
GM_DRUMS = {"kick": 36, "snare": 38, "clap": 39, "hat": 42, "open_hat": 46, "crash": 49}


def _subdivide(e, step, offset=0.0, gate=0.9):
    """Repeat an event's pitch every `step` seconds (eighth-note bass, power chords)."""
    t, out = e["start"] + offset, []
    while t < e["end"] - 1e-3:              # 1 ms: event times are rounded to 0.1 ms
        out.append(dict(e, start=t, end=min(t + gate * step, e["end"])))
        t += step
    return out


def arrange(piece, style, seconds):
    """Turn a piece's events into {part: [(bank, program, pitch, velocity, start, end)]}."""
    spec, beat = STYLES[style], 60.0 / piece["tempo"]
    ev = {r: [e for e in piece["events"] if e["role"] == r] for r in ("melody", "chord", "bass")}
    parts = {"melody": [(*spec["melody"], e["pitch"], e["velocity"], e["start"], e["end"])
                        for e in ev["melody"]]}
    bank, prog, texture = spec["chords"]
    chords = []
    for e in ev["chord"]:
        if texture == "sustain":
            chords.append(e)
        elif texture == "block":            # half-note stabs on beats 1 and 3
            chords += _subdivide(e, 2 * beat, gate=0.95)
        elif texture == "power":            # root, fifth and octave, palm-muted eighths
            if e["pitch"] == min(x["pitch"] for x in ev["chord"] if x["start"] == e["start"]):
                # The third on top keeps the harmony every style shares.
                low = e["pitch"] - 12 if e["pitch"] >= 52 else e["pitch"]
                third = [x["pitch"] for x in ev["chord"] if x["start"] == e["start"]][1]
                for p in (low, low + 7, low + 12, low + 12 + (third - e["pitch"]) % 12):
                    chords += _subdivide(dict(e, pitch=p, velocity=80), beat / 2, gate=0.8)
    if texture == "arpeggio":               # chord tones cycled upward in eighths
        bars = sorted({e["start"] for e in ev["chord"]})
        for t0 in bars:
            tones = sorted(e["pitch"] for e in ev["chord"] if e["start"] == t0)
            tones = tones + [tones[0] + 12]
            end = max(e["end"] for e in ev["chord"] if e["start"] == t0)
            for k, step in enumerate(_subdivide(dict(start=t0, end=end), beat / 2, gate=1.5)):
                chords.append(dict(step, pitch=tones[k % len(tones)], velocity=72))
    parts["chords"] = [(bank, prog, e["pitch"], e["velocity"], e["start"], e["end"]) for e in chords]
    bank, prog, texture = spec["bass"]
    bass = []
    for e in ev["bass"]:
        if texture == "as_written":
            bass.append(e)
        elif texture == "eighths":
            bass += _subdivide(e, beat / 2, gate=0.85)
        elif texture == "offbeat":
            bass += _subdivide(e, beat, offset=beat / 2, gate=0.4)
    parts["bass"] = [(bank, prog, e["pitch"], e["velocity"], e["start"], e["end"]) for e in bass]
    if spec["drums"]:
        parts["drums"] = _drums(spec["drums"], beat, seconds)
    return parts


def _drums(pattern, beat, seconds):
    """Drum hits on a 16th-note grid: GM standard kit for rock, the TR-808 kit for electronic."""
    d, hits = GM_DRUMS, []
    n16 = int(seconds / (beat / 4))
    for k in range(n16):
        pos = k % 16                        # position in the bar, in 16ths
        names = []
        if pattern == "rock":
            names += ["kick"] if pos in (0, 8, 10) else []
            names += ["snare"] if pos in (4, 12) else []
            names += ["hat"] if pos % 2 == 0 else []
            names += ["crash"] if k % 64 == 0 else []
        else:                               # four on the floor, claps, offbeat open hats
            names += ["kick"] if pos % 4 == 0 else []
            names += ["clap"] if pos in (4, 12) else []
            names += ["open_hat"] if pos % 4 == 2 else ["hat"] if pos % 2 == 1 else []
        t = k * beat / 4
        for name in names:
            vel = 110 if name in ("kick", "snare", "clap", "crash") else 75
            hits.append((128, 0 if pattern == "rock" else 25, d[name], vel, t, t + beat / 4))
    return hits


def render_piece(soundfont, piece, style, sample_rate=16000, seconds=12.0, target_rms=0.1):
    """One piece in one style -> float32 wave (N,) with a fixed loudness and no clipping."""
    n = int(round(seconds * sample_rate))
    mix = np.zeros(n, np.float32)
    for part, notes in arrange(piece, style, seconds).items():
        if notes:
            mix += PART_GAIN[part] * soundfont.render(notes, sample_rate, duration=seconds)[:n]
    rms = float(np.sqrt(np.mean(mix ** 2)))
    assert rms > 0, f"style {style} rendered silence"
    mix *= target_rms / rms
    peak = float(np.abs(mix).max())
    if peak > 0.95:                         # loudness first, but never clip
        mix *= 0.95 / peak
    return mix


# ---------------------------------------------------------------- building the dataset
def split_pieces(n_pieces, seed):
    """Split piece indices into train/val/test (about 80/10/10) by a seeded permutation."""
    order = np.random.default_rng([seed, 12345]).permutation(n_pieces)
    n_held = max(1, round(0.1 * n_pieces))
    assert n_pieces >= 2 * n_held + 1, "need at least 3 pieces for three splits"
    return {"test": sorted(order[:n_held].tolist()),
            "val": sorted(order[n_held:2 * n_held].tolist()),
            "train": sorted(order[2 * n_held:].tolist())}


def _piece_seed(seed, index):
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


_WORKER_SF = None


def _render_job(args):
    global _WORKER_SF                       # one parsed SoundFont per worker process
    index, seed, seconds, sample_rate, out_dir, split, sf_path = args
    if _WORKER_SF is None:
        from soundfont import SoundFont
        _WORKER_SF = SoundFont(sf_path)
    piece = compose(_piece_seed(seed, index), seconds)
    for style in STYLES:
        wave = render_piece(_WORKER_SF, piece, style, sample_rate, seconds)
        write_wav(Path(out_dir) / split / style / f"piece{index:04d}.wav", wave, sample_rate)
    return index, piece


def write_wav(path, wave, sample_rate):
    """16-bit WAV, written to a temporary file and renamed, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, np.clip(wave, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def build_dataset(out_dir, pieces=60, seconds=12.0, seed=0, sample_rate=16000, workers=2,
                  soundfont_path=None, progress=None):
    """Render every piece in every style into out_dir/{split}/{style}/pieceNNNN.wav."""
    if pieces < 3:
        raise ValueError(f"--pieces {pieces} is too few: the split needs one piece each for "
                         f"train, val and test, so use 3 or more")
    if seconds < 1:
        raise ValueError(f"--seconds {seconds} is too short: use 1 or more")
    splits = split_pieces(pieces, seed)
    split_of = {i: s for s, idx in splits.items() for i in idx}
    jobs = [(i, seed, seconds, sample_rate, str(out_dir), split_of[i], soundfont_path)
            for i in range(pieces)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_render_job, jobs)
        results = dict(progress(results, total=pieces) if progress else results)
    meta = dict(sample_rate=sample_rate, seconds=seconds, seed=seed,
                styles={s: {k: v for k, v in spec.items()} for s, spec in STYLES.items()},
                splits=splits,
                pieces=[dict(id=f"piece{i:04d}", index=i, split=split_of[i],
                             seed=_piece_seed(seed, i), **results[i]) for i in range(pieces)])
    tmp = Path(out_dir) / "metadata.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, Path(out_dir) / "metadata.json")
    return meta


# ---------------------------------------------------------------- the user's own music
def resample(wave, sr_in, sr_out):
    """Polyphase resampling (scipy) along the last axis; a no-op when the rates agree."""
    if sr_in == sr_out:
        return wave
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(wave, sr_out // g, sr_in // g, axis=-1).astype(np.float32)


def load_audio(path, sample_rate):
    """Read any file soundfile reads, mix to mono, resample -> float32 (N,)."""
    wave, sr = sf.read(str(path), dtype="float32", always_2d=True)   # (N, channels)
    return resample(wave.mean(axis=1), sr, sample_rate)


def load_paired_split(root, split="test", sample_rate=16000, pieces=None):
    """The built-in data's paired split: {(piece id, style): wave (N,)} and the style names.

    Only the built-in dataset is paired (every piece in every style); `pieces` keeps the
    first N piece ids. Used by the evaluation, which scores transfer against ground truth.
    """
    base = Path(root) / split
    if not (Path(root) / "metadata.json").is_file() or not base.is_dir():
        raise ValueError(f"{root} is not a built-in dataset (no metadata.json or {split}/); "
                         f"build one with `python train.py --stage data --out {root}`")
    styles = sorted(p.name for p in base.iterdir() if p.is_dir())
    ids = sorted({p.stem for p in base.glob("*/*.wav")})[:pieces]
    waves = {(i, s): torch.from_numpy(load_audio(base / s / f"{i}.wav", sample_rate))
             for i in ids for s in styles}
    return waves, styles


def _split_of_file(rel_path):
    """Stable 80/10/10 split for folders without train/val/test subfolders."""
    h = zlib.crc32(str(rel_path).encode()) % 10
    return "test" if h == 0 else "val" if h == 1 else "train"


class AudioFolder(torch.utils.data.Dataset):
    """Clips from ROOT/<style>/**/*.{wav,flac,ogg} (the GTZAN layout) or ROOT/<split>/<style>/...

    random_clips=True: one random clip per file and epoch (training); False: every file cut
    into consecutive clips at fixed offsets (evaluation). Items are (wave (N,), style index).
    """

    def __init__(self, root, split=None, sample_rate=16000, clip_seconds=4.0, random_clips=True,
                 styles=None, progress=None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"dataset folder {root} does not exist; build one with "
                             f"`python train.py --stage data` or point --data at ROOT/<style>/*.wav")
        has_splits = all((root / s).is_dir() for s in SPLITS)
        base = root / split if (has_splits and split) else root
        files = sorted(p for p in base.rglob("*") if p.suffix.lower() in AUDIO_EXTS)
        if not has_splits and split:
            files = [p for p in files if _split_of_file(p.relative_to(root)) == split]
        found = sorted({p.relative_to(base).parts[0] for p in files if p.parent != base})
        self.styles = list(styles) if styles else found
        if not files:
            raise ValueError(f"no audio files found under {base}; expected {base}/<style>/*.wav")
        if len(self.styles) < 2:
            raise ValueError(f"only one style ({', '.join(found)}) under {base}; transfer needs "
                             f"at least two style folders")
        self.sample_rate, self.clip = sample_rate, int(round(clip_seconds * sample_rate))
        self.random_clips = random_clips
        self.waves, self.labels, self.paths, bad = [], [], [], []
        for p in (progress(files, desc="loading audio") if progress else files):
            style = p.relative_to(base).parts[0]
            if style not in self.styles:
                continue
            try:
                wave = load_audio(p, sample_rate)
            except Exception as e:          # unreadable files are skipped, reported once
                bad.append(f"{p} ({type(e).__name__})")
                continue
            self.waves.append(torch.from_numpy(wave))
            self.labels.append(self.styles.index(style))
            self.paths.append(p)
        if bad:
            warnings.warn(f"skipped {len(bad)} unreadable file(s): {'; '.join(bad)}")
        if not self.waves:
            raise ValueError(f"no readable audio under {base}")
        # Evaluation items: (file, offset) for consecutive clips; a short file gives one.
        self.items = [(i, k * self.clip) for i, w in enumerate(self.waves)
                      for k in range(max(1, len(w) // self.clip))]

    def __len__(self):
        return len(self.waves) if self.random_clips else len(self.items)

    def __getitem__(self, index):
        if self.random_clips:
            i = index
            spare = len(self.waves[i]) - self.clip
            offset = int(torch.randint(0, spare + 1, ())) if spare > 0 else 0
        else:
            i, offset = self.items[index]
        wave = self.waves[i][offset:offset + self.clip]
        wave = torch.nn.functional.pad(wave, (0, self.clip - len(wave)))  # short file: pad
        return wave, self.labels[i]


class LatentClips(torch.utils.data.Dataset):
    """Cached latents of whole pieces; each item is a random crop, its style label, and a
    reference log-mel crop from another piece of the same style (zero-shot conditioning)."""

    def __init__(self, latents, specs, labels, latent_frames, ref_frames):
        self.latents, self.specs, self.labels = latents, specs, labels
        self.latent_frames, self.ref_frames = latent_frames, ref_frames
        self.by_style = {y: [i for i, l in enumerate(labels) if l == y] for y in set(labels)}

    def __len__(self):
        return len(self.latents)

    @staticmethod
    def _crop(x, n):
        spare = x.shape[-1] - n
        start = int(torch.randint(0, spare + 1, ())) if spare > 0 else 0
        return torch.nn.functional.pad(x[..., start:start + n], (0, max(0, -spare)), mode="replicate")

    def __getitem__(self, i):
        same = self.by_style[self.labels[i]]
        j = same[int(torch.randint(0, len(same), ()))]
        return (self._crop(self.latents[i], self.latent_frames), self.labels[i],
                self._crop(self.specs[j], self.ref_frames))


@torch.no_grad()
def encode_pieces(autoencoder, scale, logmel, waves, device, progress=None):
    """Whole pieces -> (scaled latents (c, F/f, T/f), log-mels (1, n_mels, T)), cached once."""
    latents, specs = [], []
    for wave in (progress(waves, desc="encoding latents") if progress else waves):
        spec = logmel(wave[None].to(device))                            # (1, 1, n_mels, T)
        latents.append((autoencoder.encode(spec).mode() * scale)[0].cpu())
        specs.append(spec[0].cpu())
    return latents, specs
