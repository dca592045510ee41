"""Audio files in and out for transfer.py: checked readers that stream a file in blocks,
the inputs a command line names (files and folders), output names, and writes that
leave nothing behind when they fail or are interrupted.

    file -> Source.read(lo, hi) -> (hi - lo, channels) float32 blocks
    blocks -> atomic_output(out) -> the whole file appears at once, or nothing does

A 60-minute song is never held in memory whole: transfer.transfer_stream reads it in
blocks and writes each block as it is done.
"""
import contextlib
import difflib
import os
import signal
from pathlib import Path

import numpy as np
import soundfile as sf

from data import AUDIO_EXTS

SILENCE_PEAK = 1e-4     # -80 dBFS: a song that never gets louder is silence
MAX_CHANNELS = 2


# ---------------------------------------------------------------- reading
class Source:
    """An audio signal read in blocks: from a file (streamed) or from an array.
    .sr, .frames (samples per channel), .channels; read(lo, hi) -> (hi - lo, channels)."""

    def __init__(self, wave=None, sr=None, path=None, name="the input"):
        self.name, self.path = name, path
        if path is None:
            wave = np.asarray(wave, dtype=np.float32)
            wave = wave[:, None] if wave.ndim == 1 else wave
            if wave.ndim != 2 or wave.shape[0] == 0:
                raise ValueError(f"{name} has no samples; give a recording with sound in it")
            self.wave, self.sr = wave, int(sr)
            self.frames, self.channels = wave.shape
        else:
            info = sf.info(str(path))
            self.sr, self.frames, self.channels = info.samplerate, info.frames, info.channels
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"{name} has {self.channels} channels; transfer.py takes mono or "
                             f"stereo, so mix it down to 2 channels first")
        if self.frames == 0:
            raise ValueError(f"{name} has no samples; give a recording with sound in it")

    def read(self, lo, hi):
        """Samples lo..hi of every channel, (hi - lo, channels) float32; NaN or infinite
        samples are a ValueError."""
        if self.path is None:
            block = self.wave[lo:hi]
        else:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(lo)
                block = f.read(hi - lo, dtype="float32", always_2d=True)
        if not np.isfinite(block).all():
            raise ValueError(f"{self.name} has NaN or infinite samples; repair or re-export it")
        return block


def open_audio(path, what="input"):
    """A file Source; every way the file can be unusable is a one-line ValueError."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no {what} file {path}; check the path")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give an audio file (WAV, FLAC or OGG)")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); give an audio file")
    try:
        source = Source(path=path, name=f"{what} {path}")
        source.read(0, min(source.frames, 1))       # a header can be readable, its data not
    except (sf.SoundFileError, RuntimeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise ValueError(f"{what} {path} is not audio soundfile can read ({reason.rstrip('.')}); "
                         f"give a WAV, FLAC or OGG file") from None
    return source


def read_audio(path, what="input"):
    """(wave (N,) or (N, 2) float32, sr) of a whole file (for short clips: --ref)."""
    source = open_audio(path, what)
    wave = source.read(0, source.frames)
    return (wave[:, 0] if source.channels == 1 else wave), source.sr


def is_silent(wave):
    return float(np.abs(wave).max()) < SILENCE_PEAK


def find_inputs(items, skip_suffixes=()):
    """The audio files a command line names, in order: files as given, folders searched
    (recursively, sorted) for AUDIO_EXTS files, skipping hidden ones and names ending in
    one of skip_suffixes (earlier outputs: song.rock.wav). -> [(path, error or None)]:
    a folder with no audio is one entry with its error."""
    found = []
    for item in map(Path, items):
        if not item.is_dir():
            found.append((item, None))
            continue
        files = sorted(p for p in item.rglob("*") if p.is_file()
                       and p.suffix.lower() in AUDIO_EXTS and not p.name.startswith(".")
                       and not p.name.lower().endswith(tuple(skip_suffixes)))
        if not files:
            found.append((item, f"the folder {item} has no audio files "
                                f"({', '.join(AUDIO_EXTS)}); give files or another folder"))
        found.extend((p, None) for p in files)
    return found


def closest(name, names, what="style"):
    """name matched case-insensitively against names; anything else is a ValueError
    that suggests the closest ones."""
    by_lower = {n.lower(): n for n in names}
    if name.lower() in by_lower:
        return by_lower[name.lower()]
    near = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(by_lower[n] for n in near)}? " if near else ""
    raise ValueError(f"unknown {what} {name!r}; {hint}known {what}s: {', '.join(sorted(names))}")


# ---------------------------------------------------------------- writing
LIMIT_KNEE = 0.9        # soft_limit: samples below this level pass unchanged


def soft_limit(block, knee=LIMIT_KNEE):
    """Keep a (samples, channels) block inside full scale without hard clipping: the peak
    over channels p of each sample above the knee becomes knee + (1 - knee) tanh((p - knee)
    / (1 - knee)), every channel scaled alike (so the stereo image and the mono sum's shape
    hold). Continuous and smooth at the knee (slope 1), never above 1."""
    peak = np.abs(block).max(axis=1, keepdims=True)
    over = peak > knee
    if not over.any():
        return block
    limited = knee + (1 - knee) * np.tanh((peak - knee) / (1 - knee))
    return (block * np.where(over, limited / np.maximum(peak, 1e-12), 1.0)).astype(block.dtype)


def output_path(source, name, output=None, folder=False):
    """Where the output of `source` goes and its soundfile format, checked before any work:
    SOURCE.NAME.wav beside the source by default; output is a file, or (folder=True, or an
    existing folder) the folder to put SOURCE.NAME.wav in."""
    source = Path(source)
    default = f"{source.stem}.{name}.wav"
    if output is None:
        out = source.with_name(default)
    elif folder or Path(output).is_dir():
        if not Path(output).is_dir():
            raise ValueError(f"the output folder {output} does not exist; create it, or give "
                             f"one input per -o file")
        out = Path(output) / default
    else:
        out = Path(output)
    if out.exists() and out.samefile(source):
        raise ValueError(f"the output {out} is the input; choose another with -o")
    if out.is_dir():
        raise ValueError(f"the output {out} is a folder; give a file name with -o")
    if not out.parent.is_dir():
        problem = "is not a folder" if out.parent.exists() else "does not exist"
        raise ValueError(f"the output folder {out.parent} {problem}; choose another with -o")
    if out.suffix[1:].upper() not in sf.available_formats():
        raise ValueError(f"cannot write {out.suffix or 'extension-less'} files; name the "
                         f"output .wav, .flac or .ogg")
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"cannot write to {out.parent} (permission denied); choose another "
                         f"output with -o")
    return out, out.suffix[1:].upper()


def _temp_name(out):
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_output(out):
    """A binary file object to write `out` through: the file appears, whole, when the block
    ends, and on any error or interrupt nothing is left. Where the system allows it
    (Linux, O_TMPFILE) the data goes to an unnamed file in the output's folder that gets a
    name only at the end, so even SIGKILL leaves nothing; elsewhere to a hidden temporary
    file, removed on errors and signals (see signals_raise)."""
    out = Path(out)
    tmp = _temp_name(out)
    try:
        fd = os.open(out.parent, os.O_TMPFILE | os.O_RDWR, 0o644)
        named = False
    except (AttributeError, OSError):
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        named = True
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
            if not named:            # the unnamed file gets its (temporary) name
                _link_unnamed(f.fileno(), tmp)
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _link_unnamed(fd, path):
    """linkat(fd's /proc entry, path, AT_SYMLINK_FOLLOW): os.link passes the flag only when
    given a directory descriptor."""
    proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def write_bytes(out, payload):
    """Atomically write a small file (the --plot picture)."""
    with atomic_output(out) as f:
        f.write(payload)


@contextlib.contextmanager
def signals_raise(signums=(signal.SIGTERM, signal.SIGHUP)):
    """Within the block, SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does, so that
    the `finally` clauses that remove temporary files run (the entry point's business:
    only the main thread may set handlers)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)
    previous = {s: signal.signal(s, interrupt) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def check_memory(needed, name):
    """A one-line ValueError when this machine has less memory free than `needed` bytes."""
    free = available_memory()
    if free is not None and free < needed:
        raise ValueError(f"{name} needs about {needed / 1e9:.1f} GB of free memory and "
                         f"{free / 1e9:.1f} GB is free; close other programs, or split "
                         f"the file")


def available_memory():
    """Bytes of memory available to a new allocation (Linux's MemAvailable), or None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
