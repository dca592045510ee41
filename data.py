"""Data: the built-in multi-style dataset, and folders of the user's own music.

Real music cannot be downloaded here, so the project composes its own pieces (music.py)
and renders each one in every style with the sampled instruments of several General MIDI
SoundFonts (soundfont.py). The test split is therefore *paired*: "piece P in style T"
exists, so a transfer can be scored against its ground truth (the paper could only run
listening tests).

    render_piece(fonts, piece, style, orchestration) -> float32 wave (N,) at 16 kHz
    build_dataset(out)  -> out/{train,val,test}/<style>/pieceNNNN.wav + metadata.json
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

import music

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".opus")   # what libsndfile reads
SPLITS = ("train", "val", "test")

# ---------------------------------------------------------------- rendering
# The SoundFonts the built-in dataset draws its instruments from, with each one's chance
# per part. TimGM6mb comes with pretty_midi; the others are Debian packages
# (`apt-get install csound-soundfont opl3-soundfont`): sampled General MIDI instruments,
# and an OPL3 FM chip's sounds. Missing ones are skipped (build_dataset says which were
# used). Held out for independent evaluation, never used: the FluidR3 family and MuseScore's.
SOUNDFONTS = {"timgm6mb": (None, 0.45),
              "csound": ("/usr/share/sounds/sf2/sf_GMbank.sf2", 0.35),
              "opl3": ("/usr/share/sounds/sf2/OPL-3_FM_128M.sf2", 0.2)}


def available_soundfonts(names=None):
    """{name: (path, weight)} of the SoundFonts found on this machine (all known if None)."""
    from soundfont import default_path
    found = {}
    for name in names or SOUNDFONTS:
        if name not in SOUNDFONTS:
            raise ValueError(f"unknown SoundFont {name!r}; choose from {', '.join(SOUNDFONTS)}")
        path, weight = SOUNDFONTS[name]
        path = Path(path) if path else default_path()
        if path.is_file():
            found[name] = (str(path), weight)
    if not found:
        raise ValueError("no SoundFont found: pip install pretty_midi (TimGM6mb), or "
                         "apt-get install csound-soundfont opl3-soundfont")
    return found


def render_piece(fonts, piece, style, orchestration, sample_rate=16000, seconds=12.0,
                 target_rms=0.1):
    """One piece in one style -> float32 wave (N,) with a fixed loudness and no clipping.

    fonts: {name: SoundFont}; orchestration: music.orchestrate's choice of instruments."""
    n = int(round(seconds * sample_rate))
    mix = np.zeros(n, np.float32)
    for part, notes in music.arrange(piece, style, seconds, orchestration).items():
        inst = orchestration["parts"][part]
        font = fonts[inst["font"]]
        if not font.has_preset(inst["bank"], inst["program"]):     # a kit the font lacks
            notes = [(b, 0, *rest) for b, _, *rest in notes]
        mix += inst["gain"] * font.render(notes, sample_rate, duration=seconds)[:n]
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


_WORKER_FONTS = {}


def _render_job(args):
    index, seed, seconds, sample_rate, out_dir, split, fonts = args
    from soundfont import SoundFont
    for name, (path, _) in fonts.items():   # each font parsed once per worker process
        _WORKER_FONTS.setdefault(name, SoundFont(path))
    piece_seed = _piece_seed(seed, index)
    piece = music.compose(piece_seed, seconds)
    orchestra = {}
    for k, style in enumerate(music.STYLES):
        orchestra[style] = music.orchestrate([piece_seed, k], style, list(fonts),
                                             [w for _, w in fonts.values()])
        wave = render_piece(_WORKER_FONTS, piece, style, orchestra[style], sample_rate, seconds)
        write_wav(Path(out_dir) / split / style / f"piece{index:04d}.wav", wave, sample_rate)
    return index, dict(piece, orchestration=orchestra)


def write_wav(path, wave, sample_rate):
    """16-bit WAV, written to a temporary file and renamed, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(tmp, np.clip(wave, -1, 1), sample_rate, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)


def build_dataset(out_dir, pieces=60, seconds=12.0, seed=0, sample_rate=16000, workers=2,
                  soundfonts=None, progress=None):
    """Render every piece in every style into out_dir/{split}/{style}/pieceNNNN.wav.

    soundfonts: names in SOUNDFONTS to draw instruments from (None: every one installed)."""
    if pieces < 3:
        raise ValueError(f"--pieces {pieces} is too few: the split needs one piece each for "
                         f"train, val and test, so use 3 or more")
    if seconds < 1:
        raise ValueError(f"--seconds {seconds} is too short: use 1 or more")
    splits = split_pieces(pieces, seed)
    split_of = {i: s for s, idx in splits.items() for i in idx}
    fonts = available_soundfonts(soundfonts)
    jobs = [(i, seed, seconds, sample_rate, str(out_dir), split_of[i], fonts)
            for i in range(pieces)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_render_job, jobs)
        results = dict(progress(results, total=pieces) if progress else results)
    meta = dict(sample_rate=sample_rate, seconds=seconds, seed=seed, soundfonts=fonts,
                styles=music.STYLES,
                splits=splits,
                pieces=[dict(id=f"piece{i:04d}", index=i, split=split_of[i],
                             seed=_piece_seed(seed, i), **results[i]) for i in range(pieces)])
    tmp = Path(out_dir) / "metadata.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, Path(out_dir) / "metadata.json")
    return meta


# ---------------------------------------------------------------- the user's own music
def resample(wave, sr_in, sr_out):
    """Polyphase resampling along the last axis (resample_poly); a no-op when the rates
    agree. float32 (..., N) -> float32 (..., ceil(N sr_out / sr_in))."""
    if sr_in == sr_out:
        return wave
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(wave, sr_out // g, sr_in // g)


def lowpass_taps(up, down, half_width=10, beta=5.0):
    """The anti-aliasing filter of resampling by up / down (as scipy.signal.resample_poly
    designs it): a windowed sinc with its cutoff at the lower Nyquist, 1 / max(up, down)
    of the upsampled rate, 2 half_width max(up, down) + 1 taps, a Kaiser window (beta),
    gain `up` at DC (the zeros that upsampling inserts cost 1 / up of the level)."""
    rate = max(up, down)
    n = np.arange(-half_width * rate, half_width * rate + 1)
    h = np.sinc(n / rate) * np.kaiser(len(n), beta)
    return h * (up / h.sum())


def resample_poly(x, up, down):
    """x (..., N) at rate r -> (..., ceil(N up / down)) at r up / down: upsample by `up`
    (zeros between samples), low-pass (lowpass_taps, centred: no delay), keep every
    down-th sample; the signal is zero outside 0..N-1.

    The upsampled signal is never made: output m = j up + r reads the inputs
    x[j down + q] with taps h[r down - q up] (q over the few offsets where the tap
    exists), so the `up` output phases r are the channels of one strided convolution,
    stride `down`, of x with a (up, 1, K) kernel, K ~ (2 half_width max(up, down) + down) / up."""
    h = torch.from_numpy(lowpass_taps(up, down))
    half = (len(h) - 1) // 2
    q_lo, q_hi = -(half // up), ((up - 1) * down + half) // up
    r, q = torch.arange(up)[:, None], torch.arange(q_lo, q_hi + 1)[None]
    k = r * down + half - q * up                                     # tap of each (r, q)
    kernel = torch.where((k >= 0) & (k < len(h)), h[k.clamp(0, len(h) - 1)], 0.0)
    lead = np.shape(x)[:-1]
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    x = x.reshape(-1, 1, x.shape[-1])                                # (B, 1, N)
    n_out = -(-x.shape[-1] * up // down)
    cols = -(-n_out // up)                                           # output samples / up
    pad = (-q_lo, max(0, (cols - 1) * down + kernel.shape[1] - x.shape[-1] + q_lo))
    y = torch.nn.functional.conv1d(torch.nn.functional.pad(x, pad),
                                   kernel[:, None].float(), stride=down)  # (B, up, cols)
    y = y.transpose(1, 2).reshape(len(x), -1)[:, :n_out]             # output m = j up + r
    return y.numpy().reshape(*lead, n_out)


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
    """Clips from ROOT/<style>/**/*.{wav,flac,ogg,opus} (the GTZAN layout) or
    ROOT/<split>/<style>/...

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


def cross_style_pairs(folder, seed, per_piece=1):
    """{target file index: source file index} of a paired AudioFolder (one file per piece
    and style, named by the piece): for each piece, `per_piece` distinct target styles, each
    with another style of the same piece as its source, drawn by seed."""
    by_piece = {}
    for i, (p, y) in enumerate(zip(folder.paths, folder.labels)):
        by_piece.setdefault(p.stem, {})[y] = i
    rng, pairs = np.random.default_rng(seed), {}
    for _, files in sorted(by_piece.items()):
        for _ in range(min(per_piece, len(files) - 1)):
            target, source = rng.choice(sorted(files), 2, replace=False)
            while files[target] in pairs:                   # a target once per piece
                target, source = rng.choice(sorted(files), 2, replace=False)
            pairs[files[target]] = files[source]
    return pairs


class DecodedClips(torch.utils.data.Dataset):
    """An AudioFolder's random clips, each with a random crop of a transfer's latent
    (the decoder's input in use) and the matching stretch of the target-style render:
    (wave (N,), style index, latent (C, F, frames), target wave ((frames * f - 1) hop,)),
    latent frame j being log-mel frame f j, sample f j hop. latents: {file index: latent
    (C, F, L)} of transfers into that file's style from another style of the same piece."""

    def __init__(self, folder, latents, factor, hop, frames):
        self.folder, self.latents, self.keys, self.styles = folder, latents, sorted(latents), \
            folder.styles
        self.factor, self.hop, self.frames = factor, hop, frames

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        wave, label = self.folder[index]
        i = self.keys[int(torch.randint(0, len(self.keys), ()))]
        z, whole = self.latents[i], self.folder.waves[i]
        j = int(torch.randint(0, max(0, z.shape[-1] - self.frames) + 1, ()))
        z = torch.nn.functional.pad(z[..., j:j + self.frames],
                                    (0, max(0, self.frames - z.shape[-1])), mode="replicate")
        n, start = (self.frames * self.factor - 1) * self.hop, j * self.factor * self.hop
        target = whole[start:start + n]
        return wave, label, z, torch.nn.functional.pad(target, (0, n - len(target)))


class GuidedClips(torch.utils.data.Dataset):
    """An AudioFolder's random clips (training), `share` of them replaced by a clip of a file
    that has a guide: the log-mel that a transfer into that file's style made from another
    style of the same piece, cropped to the same frames (frame k is sample k * hop). Items:
    (wave (N,), style index, guide (1, n_mels, frames), guided); a plain clip's guide is
    zeros and guided False. guides: {file index: log-mel (1, n_mels, T)}."""

    def __init__(self, folder, guides, share, hop, frames):
        self.folder, self.guides, self.share, self.styles = folder, guides, share, folder.styles
        self.hop, self.frames, self.keys = hop, frames, sorted(guides)
        self.n_mels = next(iter(guides.values())).shape[-2]

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, index):
        if not self.keys or float(torch.rand(())) >= self.share:
            wave, label = self.folder[index]
            return wave, label, torch.zeros(1, self.n_mels, self.frames), False
        i = self.keys[int(torch.randint(0, len(self.keys), ()))]
        whole, guide, clip = self.folder.waves[i], self.guides[i], self.folder.clip
        k = int(torch.randint(0, max(0, (len(whole) - clip) // self.hop) + 1, ()))
        wave = whole[k * self.hop:k * self.hop + clip]
        wave = torch.nn.functional.pad(wave, (0, clip - len(wave)))
        guide = guide[..., k:k + self.frames]
        guide = torch.nn.functional.pad(guide, (0, self.frames - guide.shape[-1]), mode="replicate")
        return wave, self.folder.labels[i], guide, True


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


class PairedLatentClips(LatentClips):
    """The built-in data's pairs: each item is a crop of piece P in style T (the target,
    clean), its label, a reference log-mel crop of another piece in style T, and the same
    crop of P in a random style S (T included) in a random version (clean or recorded
    through augment.Chain): the source a paired LDM learns to transfer from.

    versions: [(latents, specs)] per version, version 0 clean; pieces: each item's piece id."""

    def __init__(self, versions, labels, pieces, latent_frames, ref_frames):
        super().__init__(versions[0][0], versions[0][1], labels, latent_frames, ref_frames)
        self.versions = versions
        self.by_piece = {}
        for i, (p, y) in enumerate(zip(pieces, labels)):
            self.by_piece.setdefault(p, []).append(i)
        self.pieces = pieces

    def _draw(self, n):
        return int(torch.randint(0, n, ()))

    def __getitem__(self, i):
        z0 = self.latents[i]
        spare = z0.shape[-1] - self.latent_frames
        start = self._draw(spare + 1) if spare > 0 else 0
        same_piece = self.by_piece[self.pieces[i]]
        j = same_piece[self._draw(len(same_piece))]
        src_latents = self.versions[self._draw(len(self.versions))][0]
        same_style = self.by_style[self.labels[i]]
        k = same_style[self._draw(len(same_style))]
        ref_specs = self.versions[self._draw(len(self.versions))][1]

        def crop(x):
            x = x[..., start:start + self.latent_frames].float()
            return torch.nn.functional.pad(x, (0, self.latent_frames - x.shape[-1]),
                                           mode="replicate")
        return (crop(z0), self.labels[i], self._crop(ref_specs[k].float(), self.ref_frames),
                crop(src_latents[j]))


@torch.no_grad()
def encode_pieces(autoencoder, scale, logmel, waves, device, progress=None, chain=None, seed=0,
                  cache=None, bf16=False):
    """Whole pieces -> (scaled latents (c, F/f, T/f), log-mels (1, n_mels, T)), once.

    chain: an augment.Chain each piece goes through first (seeded by seed and its index);
    cache: a file that keeps the result (name it after everything it depends on);
    bf16: autocast the encoder (its latents move by far less than its own error)."""
    if cache is not None and Path(cache).is_file():
        return tuple(torch.load(cache, weights_only=True))
    latents, specs = [], []
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16)
    for i, wave in enumerate(progress(waves, desc="encoding latents") if progress else waves):
        wave = wave[None].to(device)
        if chain is not None:
            wave = chain(wave, torch.Generator().manual_seed(seed * 1_000_003 + i))
        spec = logmel(wave)                                             # (1, 1, n_mels, T)
        with autocast:
            z = autoencoder.encode(spec).mode().float()
        latents.append((z * scale)[0].cpu())
        specs.append(spec[0].cpu() if chain is None else spec[0].cpu().half())
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(f"{cache}.tmp")
        torch.save([latents, specs], tmp)
        os.replace(tmp, cache)
    return latents, specs


def latent_clips(folder, autoencoder, scale, logmel, device, c, chain, seed, cache_dir, tag,
                 bf16=False, progress=None):
    """The LDM's training items from an AudioFolder: PairedLatentClips (clean latents, and
    c.versions recorded through `chain`) when c.paired, else LatentClips. Each encoding is
    cached in cache_dir under a name made of what it depends on: the autoencoder (`tag`),
    the files (paths, sizes, times), the chain and its seed, and bf16."""
    files = zlib.crc32(repr([(str(p), p.stat().st_size, p.stat().st_mtime_ns)
                             for p in folder.paths]).encode())

    def encode(chain=None, seed=0):
        how = f"{zlib.crc32(repr(chain).encode())}-{seed}" if chain else "clean"
        cache = Path(cache_dir) / f"{tag}-{files}-{how}-{int(bf16)}.pt"
        return encode_pieces(autoencoder, scale, logmel, folder.waves, device, progress,
                             chain, seed, cache, bf16)
    clean = encode()
    if not c.paired:
        return LatentClips(*clean, folder.labels, c.latent_frames, c.ref_frames)
    recorded = [encode(chain, seed + v) for v in range(c.versions)]
    return PairedLatentClips([clean] + recorded, folder.labels, [p.stem for p in folder.paths],
                             c.latent_frames, c.ref_frames)
