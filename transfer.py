"""Style transfer of a whole song: the paper's inference pipeline, end to end (Sec. 3).

The song's log-mel is encoded to the autoencoder's latent; the latent diffusion model moves
it to the target style (SDEdit or DDIM inversion, with classifier-free guidance); the
decoder returns a log-mel and GuideDiff (or Griffin-Lim) a waveform.

A song is longer than the 4 s crops the U-Net was trained on, so it is denoised in
overlapping windows, MultiDiffusion-style (Bar-Tal et al. 2023): at every step the whole
latent is cut into windows, all windows go through the U-Net as one batch, and their
predictions are averaged back with weights that fade over the overlaps; the DDIM step then
moves the whole latent. One noise tensor covers the song, so windows agree where they
overlap and there is no seam.

    song (N_in, channels) at sr -> mono 16 kHz (N,) -> spec (1, 1, 128, T) -> z (1, 4, 32, T/4)
    z -> windows (n, 4, 32, W) -> predictions averaged -> z_tgt -> spec_tgt -> wave (N,) -> sr
"""
import argparse
import contextlib
import math
import time
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import autoencoder as ae_lib
import config
import data
import diffusion
import guidediff
import plot
import unet
from stft import LogMel, griffin_lim

# Defaults: the pick of the strength x guidance sweep on the validation split
# (results/SWEEP.md): inversion at 0.9 with w = 3 names the target style 100% of the time
# and keeps the most notes of the settings that do (0.701 against the unchanged source's
# 0.739); SDEdit at the same strength and guidance keeps 0.489.
STRENGTH = 0.9          # t_start / T of SDEdit or inversion: higher moves further from the source
MODE = "inversion"      # or "sdedit"
STEPS = 10              # denoising steps
GUIDANCE = 3.0          # classifier-free guidance weight w (1 = no guidance)
WARM_START = "extrapolate"  # inversion's first guess per step (diffusion.ddim_invert)
SEED = 0
GRIFFIN_LIM_ITERS = 64
WINDOW = 64             # latent frames per window (4.1 s): the ldm's training crop
OVERLAP = 4             # latent frames shared by neighbouring windows (at least)
WINDOW_BATCH = 16       # windows per U-Net call: memory stays flat on long songs
AE_CHUNK = 2048         # log-mel frames per autoencoder call (33 s), ...
AE_MARGIN = 64          # ... each with this much context either side, dropped afterwards
REF_CROPS = 8           # a clip's style: mean of its tokens over up to this many crops
SILENCE_PEAK = 1e-4     # -80 dBFS: a song that never gets louder is silence
CKPT_DIR = Path(__file__).resolve().parent / "checkpoints"


# ---------------------------------------------------------------- models
@dataclass
class Models:
    """Everything a transfer needs, loaded once by load_models."""
    cfg: config.Config
    styles: list
    logmel: LogMel
    autoencoder: ae_lib.Autoencoder
    ldm: unet.LatentDiffusion
    latent_scale: float
    vocoder: object = None          # a GuideDiff; None means Griffin-Lim
    noise_levels: list = None       # GuideDiff's few-step schedule
    note: str = ""                  # which vocoder, and why
    bf16: bool = True               # bfloat16 autocast for the U-Net and GuideDiff

    @property
    def device(self):
        return self.logmel.mel_fb.device


def _load(ckpt_dir, stage, build):
    """(model, checkpoint) for a stage; any checkpoint that does not fit is a ValueError."""
    path = Path(ckpt_dir) / f"{stage}.pt"
    ckpt = config.load_checkpoint(path, stage)
    try:
        return build(ckpt), ckpt
    except (KeyError, TypeError, ValueError) as e:
        if "train.py" in str(e):
            raise
        raise ValueError(f"{path} does not fit this code ({type(e).__name__}: {e}); retrain it "
                         f"with `python train.py --stage {stage}`") from None


def load_models(ckpt_dir=CKPT_DIR, vocoder=None, device="cpu", compile=False, bf16=True):
    """Load and check the autoencoder, the ldm and the vocoder. vocoder None: GuideDiff if a
    finished guidediff.pt exists, else Griffin-Lim; Models.note says which and why.
    compile: torch.compile the networks (see compile_models); bf16: bfloat16 autocast for
    the U-Net and GuideDiff (fp32 for the autoencoder, whose log-mel feeds everything)."""
    ldm, ldm_ckpt = _load(ckpt_dir, "ldm", unet.from_checkpoint)
    autoencoder, ae_ckpt = _load(ckpt_dir, "autoencoder", ae_lib.from_checkpoint)
    cfg = config.config_from_dict(ldm_ckpt["config"])
    if (ae_ckpt.get("latent_scale") != ldm_ckpt.get("latent_scale")
            or config.config_from_dict(ae_ckpt["config"]).audio != cfg.audio):
        raise ValueError("the ldm checkpoint was trained on another autoencoder; retrain it "
                         "with `python train.py --stage ldm`")
    models = Models(cfg, list(ldm_ckpt["styles"]), LogMel(**asdict(cfg.audio)), autoencoder,
                    ldm, float(ldm_ckpt["latent_scale"]), bf16=bf16)
    gd_path = Path(ckpt_dir) / "guidediff.pt"
    models.note = f"vocoder: Griffin-Lim (no {gd_path}: `python train.py --stage guidediff`)"
    if vocoder == "guidediff" or vocoder is None and gd_path.is_file():
        gd, gd_ckpt = _load(ckpt_dir, "guidediff", guidediff.from_checkpoint)
        gd_cfg = config.config_from_dict(gd_ckpt["config"])
        if gd_cfg.audio != cfg.audio:
            raise ValueError("the guidediff checkpoint was made for another log-mel front end; "
                             "retrain it with `python train.py --stage guidediff`")
        # The schedule search runs when training ends: a checkpoint saved during training
        # has none, so it is only used on request, with the schedule training validates with.
        models.note = (f"vocoder: Griffin-Lim ({gd_path} is from an unfinished run; "
                       f"--vocoder guidediff uses it anyway)")
        if gd.searched or vocoder == "guidediff":
            models.vocoder, models.note = gd, f"vocoder: GuideDiff ({gd_path})"
            models.noise_levels = gd.schedules[gd.default_steps]
    for module in (models.logmel, autoencoder, ldm, models.vocoder):
        if module is not None:
            module.to(device).eval().requires_grad_(False)
    if compile:
        compile_models(models)
    return models


def compile_models(models):
    """torch.compile (inductor: C++/OpenMP kernels on a CPU, Triton on CUDA) of the U-Net,
    the autoencoder's encoder and decoder and GuideDiff's guide encoder and denoiser, which
    fuses GroupNorm + SiLU, the FiLM arithmetic and the attention's surroundings. Windows
    all have WINDOW frames but batches differ (inversion, guided steps, the last chunk), so
    the U-Net compiles twice: for the first shape, then once with a dynamic batch (torch's
    automatic dynamic shapes; dynamic=True fails to lower the strided convolutions here).
    The autoencoder and GuideDiff see each song's length and are compiled dynamic. The
    first call pays for compilation (RESULTS.md, speed table: about a minute)."""
    models.ldm.unet = torch.compile(models.ldm.unet)
    ae = models.autoencoder
    ae.encoder, ae.decoder = (torch.compile(m, dynamic=True) for m in (ae.encoder, ae.decoder))
    if models.vocoder is not None:
        gd = models.vocoder
        gd.guide, gd.denoise = torch.compile(gd.guide, dynamic=True), \
            torch.compile(gd.denoise, dynamic=True)


# ---------------------------------------------------------------- chunks
def in_chunks(fn, x, chunk, margin, scale=1.0):
    """fn over the last axis of x, `chunk` frames at a time with `margin` frames of context
    either side (cut from the output); fn maps T frames to ceil(T * scale). chunk and
    margin must be multiples of 1 / scale. Keeps the autoencoder's memory flat."""
    T = x.shape[-1]
    if T <= chunk + 2 * margin:
        return fn(x)
    pieces = []
    for s in range(0, T, chunk):
        lo, hi = max(s - margin, 0), min(s + chunk + margin, T)
        y = fn(x[..., lo:hi])
        pieces.append(y[..., round((s - lo) * scale):math.ceil((min(s + chunk, T) - lo) * scale)])
    return torch.cat(pieces, -1)


# ---------------------------------------------------------------- the transfer
class Stopwatch:
    """Compute seconds per pipeline stage (and FLOPs, given a running
    torch.utils.flop_counter.FlopCounterMode), for the speed table in train.py:
    `with stopwatch("decoder"): ...` adds to .seconds["decoder"] and .flops["decoder"]."""

    def __init__(self, device="cpu", flop_counter=None):
        self.seconds, self.flops, self.counter = {}, {}, flop_counter
        self.cuda = torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def __call__(self, stage):
        flops = self.counter.get_total_flops() if self.counter else 0
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        if self.counter:
            self.flops[stage] = self.flops.get(stage, 0) + self.counter.get_total_flops() - flops


def no_stopwatch(stage):
    return contextlib.nullcontext()


@torch.no_grad()
def reference_tokens(style_encoder, spec, ref_frames, crops=REF_CROPS):
    """Style tokens (1, M, D) of a log-mel (1, 1, n_mels, T) of any length: the mean over up
    to `crops` evenly spaced crops of ref_frames (the length the encoder was trained on); a
    short clip is looped to fill one."""
    if spec.shape[-1] < ref_frames:
        spec = spec.repeat(1, 1, 1, -(-ref_frames // spec.shape[-1]))
    T = spec.shape[-1]
    n = min(crops, -(-T // ref_frames))
    starts = torch.linspace(0, T - ref_frames, n).round().long().tolist()
    batch = torch.cat([spec[..., s:s + ref_frames] for s in starts])    # (n, 1, n_mels, ref_frames)
    return style_encoder.from_reference(batch).mean(0, keepdim=True)    # (1, M, D)


@torch.no_grad()
def stylize(models, spec, context, *, source_context=None, strength=STRENGTH, mode=MODE,
            steps=STEPS, guidance=GUIDANCE, generator=None, noise=None, window=WINDOW,
            overlap=OVERLAP, progress=False, warm_start=WARM_START, stopwatch=no_stopwatch):
    """Normalised log-mel (1, 1, n_mels, T) -> the same music under the style tokens
    `context` (1, M, D), as a log-mel (1, 1, n_mels, T) before the vocoder.

    diffusion.transfer over windows; SDEdit is written out here to take its noise as an
    argument (drawn from `generator` over the whole latent when None), so that one noise
    tensor can be shared by a song and its parts. Inversion needs source_context;
    warm_start ("extrapolate" or "previous"; "off" for none: diffusion.ddim_invert) saves
    one U-Net call a step of it."""
    assert mode in ("sdedit", "inversion"), mode
    ldm, ae, scale = models.ldm, models.autoencoder, models.latent_scale
    f = ae.factor
    # bf16 changes the autoencoder's log-mel by 0.002 (L1) against its own error of 0.095.
    autocast = torch.autocast(spec.device.type, dtype=torch.bfloat16, enabled=models.bf16)
    with stopwatch("encoder"), autocast:
        z = in_chunks(lambda s: ae.encode(s).mode(), spec, AE_CHUNK, AE_MARGIN, 1 / f).float()
        z = z * scale
    model = diffusion.windowed(ldm.unet, z.shape[-1], window, overlap, WINDOW_BATCH,
                               bf16=models.bf16, cond=z if ldm.paired else None)
    null, prediction = ldm.style.null_context(1), ldm.c.prediction
    t_start = int(round(strength * (ldm.sched.T - 1)))
    windows = len(diffusion.window_starts(z.shape[-1], window, overlap))

    def bar(desc):
        return (lambda loop: tqdm(loop, desc=f"{desc} (windows: {windows})", unit="step",
                                  leave=False)) if progress else None

    with stopwatch("U-Net sampling"):
        if mode == "inversion":              # deterministic: diffusion.transfer as it is
            z_tgt = diffusion.transfer(model, ldm.sched, z, context, steps, strength,
                                       "inversion", context_src=source_context,
                                       null_context=null, guidance=guidance,
                                       prediction=prediction, warm_start=warm_start,
                                       progress=bar("inverting, then denoising"))
        else:                                # SDEdit (Meng et al. 2022) with our noise
            if noise is None:
                noise = torch.randn(z.shape, generator=generator)
            t = torch.full((1,), t_start, device=z.device, dtype=torch.long)
            x_t = diffusion.q_sample(ldm.sched, z, t, noise.to(z))
            z_tgt = diffusion.ddim_sample(model, ldm.sched, x_t, context, steps,
                                          guidance=guidance, null_context=null,
                                          t_start=t_start, prediction=prediction,
                                          progress=bar("denoising"))
    with stopwatch("decoder"), autocast:
        spec_tgt = in_chunks(ae.decode, z_tgt / scale, AE_CHUNK // f, AE_MARGIN // f, f).float()
    return spec_tgt[..., :spec.shape[-1]]                                   # (1, 1, n_mels, T)


@torch.no_grad()
def vocode(models, spec, length, seed=SEED):
    """Log-mel (1, 1, n_mels, T) -> wave (1, length) with GuideDiff, or Griffin-Lim."""
    if models.vocoder is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.autocast(spec.device.type, dtype=torch.bfloat16, enabled=models.bf16):
            return models.vocoder.vocode(spec, noise_levels=models.noise_levels,
                                         generator=generator, length=length).float()
    a = models.cfg.audio
    generator = torch.Generator(spec.device).manual_seed(seed)
    return griffin_lim(models.logmel.mel_to_magnitude(spec), a.n_fft, a.hop,
                       n_iter=GRIFFIN_LIM_ITERS, length=length, generator=generator)


def to_mono(wave, name="the input"):
    """(N,) or (N, channels) float -> mono float32 (N,); empty or non-finite is a ValueError."""
    wave = np.asarray(wave, dtype=np.float32)
    wave = wave.mean(axis=1) if wave.ndim == 2 else wave
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"{name} has no samples; give a recording with sound in it")
    if not np.isfinite(wave).all():
        raise ValueError(f"{name} has NaN or infinite samples; repair or re-export it")
    return wave


def is_silent(wave):
    return float(np.abs(wave).max()) < SILENCE_PEAK


def check_request(models, style, ref, strength, mode, steps, guidance):
    """User errors in a request, as one ValueError each (before any work is done)."""
    if (style is None) == (ref is None):
        raise ValueError("give a target STYLE (see --list-styles) or a --ref clip, not both")
    if style is not None and style not in models.styles:
        raise ValueError(f"unknown style {style!r}; known styles: {', '.join(models.styles)} "
                         f"(or take the style from a clip with --ref)")
    if not 0.0 <= strength <= 1.0 or steps < 1 or guidance < 0:
        raise ValueError("need 0 <= strength <= 1, steps >= 1 and guidance >= 0")
    if mode not in ("sdedit", "inversion"):
        raise ValueError(f"unknown mode {mode!r}; use 'sdedit' or 'inversion'")
    if ref is not None and is_silent(to_mono(ref[0], "the reference clip")):
        raise ValueError("the reference clip is silent; give a clip of the style you want")


def log_mel(models, wave, sr):
    """Mono wave (N,) at sr -> normalised log-mel (1, 1, n_mels, T) at the model's rate."""
    a = models.cfg.audio
    wave = data.resample(wave, sr, a.sample_rate)
    wave = np.pad(wave, (0, max(0, a.n_fft - len(wave))))      # the STFT needs n_fft / 2 + 1
    return models.logmel(torch.from_numpy(wave).to(models.device)[None])


def transfer(wave, sr, style=None, *, ref=None, strength=STRENGTH, mode=MODE, steps=STEPS,
             guidance=GUIDANCE, vocoder=None, seed=SEED, device="cpu", ckpt_dir=CKPT_DIR,
             progress=True, models=None, warm_start=WARM_START, stopwatch=no_stopwatch):
    """The same music in another style: wave (N,) or (N, channels) at sr -> (mono float32
    (N,), sr). The target is a style name (see Models.styles) or ref = (wave, sr), a clip to
    take the style from. vocoder: "guidediff", "griffinlim" or None (GuideDiff if a
    finished checkpoint exists). models: from load_models, to load once for many calls
    (it then fixes ckpt_dir, vocoder and device). stopwatch: a Stopwatch, to time the stages."""
    models = models or load_models(ckpt_dir, vocoder, device)
    mono = to_mono(wave)
    check_request(models, style, ref, strength, mode, steps, guidance)
    if is_silent(mono):
        return np.zeros_like(mono), sr
    a, dev = models.cfg.audio, models.device
    with stopwatch("log-mel and style tokens"):
        x = data.resample(mono, sr, a.sample_rate)
        n = len(x)
        T = 1 + n // a.hop                   # frames of the unpadded song
        # Shorter than one window: pad with silence, so the U-Net sees the size it knows.
        x = np.pad(x, (0, max(0, (WINDOW * models.autoencoder.factor - 1) * a.hop - n)))
        spec = log_mel(models, x, a.sample_rate)                            # (1, 1, n_mels, T')
        if ref is not None:
            context = reference_tokens(models.ldm.style,
                                       log_mel(models, to_mono(ref[0]), ref[1]),
                                       models.cfg.ldm.ref_frames)
        else:
            label = torch.tensor([models.styles.index(style)], device=dev)
            context = models.ldm.style.from_labels(label)                   # (1, M, D)
        # A user's song has no source label: its own tokens name its style (the ldm is
        # trained so that reference tokens match label tokens).
        source = reference_tokens(models.ldm.style, spec[..., :T], models.cfg.ldm.ref_frames) \
            if mode == "inversion" else None
    generator = torch.Generator().manual_seed(seed)
    spec_tgt = stylize(models, spec, context, source_context=source, strength=strength,
                       mode=mode, steps=steps, guidance=guidance, generator=generator,
                       progress=progress, warm_start=warm_start, stopwatch=stopwatch)
    with stopwatch("vocoder"):
        out = vocode(models, spec_tgt[..., :T], n, seed)[0].float().cpu().numpy()
    with stopwatch("log-mel and style tokens"):   # the way back to the input's rate
        out = data.resample(out, a.sample_rate, sr)[:len(mono)]
    return np.pad(out, (0, len(mono) - len(out))).astype(np.float32), sr


# ---------------------------------------------------------------- entry point
def read_audio(path, what="input"):
    """(mono wave (N,) float32, sr) of an audio file; every way to fail is a ValueError."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"no {what} file {path}; check the path")
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give an audio file (WAV, FLAC or OGG)")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes); give an audio file")
    try:
        wave, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        reason = getattr(e, "error_string", None) or str(e)
        raise ValueError(f"{what} {path} is not audio soundfile can read ({reason.rstrip('.')}); "
                         f"give a WAV, FLAC or OGG file") from None
    return to_mono(wave, f"{what} {path}"), sr


def output_path(args):
    """The output file and its soundfile format, checked before any work is done."""
    source = Path(args.input)
    name = args.style or Path(args.ref).stem
    out = Path(args.output) if args.output else source.with_name(f"{source.stem}.{name}.wav")
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
    return out, out.suffix[1:].upper()


class Parser(argparse.ArgumentParser):
    def error(self, message):               # one line, like every other error here
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser():
    p = Parser(prog="transfer.py", description="The same music in another style: latent "
               "diffusion style transfer (arXiv 2404.14771). Reads WAV, FLAC or OGG at any "
               "sample rate; stereo is mixed to mono (the model hears and writes one channel); "
               "writes mono audio at the input's sample rate and duration.")
    p.add_argument("input", nargs="?", metavar="INPUT", help="the song")
    p.add_argument("style", nargs="?", metavar="STYLE",
                   help="target style (see --list-styles); omit it when giving --ref")
    p.add_argument("-o", "--output", metavar="OUT",
                   help="output file, .wav/.flac/.ogg (default: INPUT.STYLE.wav beside INPUT)")
    p.add_argument("--ref", metavar="REF", help="take the style from this clip instead")
    p.add_argument("--strength", type=float, default=STRENGTH,
                   help="0..1, how far to move from the source (default %(default)s)")
    p.add_argument("--mode", choices=("sdedit", "inversion"), default=MODE,
                   help="noise the song (sdedit) or invert it under its own style "
                        "(deterministic); default %(default)s")
    p.add_argument("--steps", type=int, default=STEPS, help="denoising steps (default %(default)s)")
    p.add_argument("--guidance", type=float, default=GUIDANCE,
                   help="classifier-free guidance weight (default %(default)s)")
    p.add_argument("--vocoder", choices=("guidediff", "griffinlim"),
                   help="default: guidediff if a finished CKPT_DIR/guidediff.pt exists, "
                        "else griffinlim")
    p.add_argument("--warm-start", choices=diffusion.WARM_STARTS,
                   default=WARM_START, help="inversion: each step's first guess of the noise "
                   "from the previous steps' (extrapolated, or the last one as it is), or "
                   "'off': from a U-Net call, one more call a step (40 U-Net calls instead of 31 "
                   "at the defaults); default %(default)s")
    p.add_argument("--seed", type=int, default=SEED, help="default %(default)s")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks: faster per call, but the first call "
                        "compiles for a while (worth it for long songs or many calls)")
    p.add_argument("--fp32", action="store_true",
                   help="float32 everywhere (default: bfloat16 autocast for the U-Net and "
                        "GuideDiff)")
    p.add_argument("--plot", metavar="PNG", help="also write the source and output log-mels")
    p.add_argument("--timing", action="store_true",
                   help="print the compute seconds of each stage and the real-time factor")
    p.add_argument("--list-styles", action="store_true", help="print the style names and exit")
    p.add_argument("--ckpt-dir", default=str(CKPT_DIR), help="default: checkpoints/ beside "
                   "this file")
    return p


def run(args):
    if args.list_styles:
        print("\n".join(_load(args.ckpt_dir, "ldm", lambda c: c["styles"])[0]))
        return
    if args.input is None or (args.style is None) == (args.ref is None):
        raise ValueError("give INPUT and a STYLE (see --list-styles), or INPUT and --ref CLIP")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available here; use --device cpu")
    wave, sr = read_audio(args.input)
    ref = read_audio(args.ref, "reference") if args.ref else None
    out, fmt = output_path(args)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise ValueError(f"the folder of --plot {args.plot} does not exist; create it")
    models = load_models(args.ckpt_dir, args.vocoder, args.device, args.compile,
                         bf16=not args.fp32)
    check_request(models, args.style, ref, args.strength, args.mode, args.steps, args.guidance)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:                                     # the temporary file proves the folder writable
        open(tmp, "xb").close()
    except OSError as e:
        raise ValueError(f"cannot write to {out.parent} ({e.strerror}); choose another "
                         f"output with -o") from None
    try:
        if args.vocoder is None:
            print(f"note: {models.note}", file=sys.stderr)
        if is_silent(wave):
            print(f"warning: {args.input} is silent; writing silence to {out}", file=sys.stderr)
        stopwatch = Stopwatch(args.device) if args.timing else no_stopwatch
        t0 = time.perf_counter()
        restyled, _ = transfer(wave, sr, args.style, ref=ref, strength=args.strength,
                               mode=args.mode, steps=args.steps, guidance=args.guidance,
                               seed=args.seed, models=models,
                               warm_start=args.warm_start, stopwatch=stopwatch)
        if args.timing:
            seconds = dict(stopwatch.seconds, total=time.perf_counter() - t0)
            print("; ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + f"; real-time "
                  f"factor {seconds['total'] * sr / len(wave):.3f} (model loading not counted)",
                  file=sys.stderr)
        sf.write(tmp, restyled, sr, format=fmt)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if args.plot:
        specs = [log_mel(models, w, sr)[0, 0].cpu().numpy() for w in (wave, restyled)]
        plot.write_png(args.plot, plot.spectrogram_image(*specs))
    print(out)


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:
        print(f"transfer.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
