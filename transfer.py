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

A song is streamed in 30-s blocks (with context either side) through the log-mel and the
encoder, and again through the decoder, the vocoder and the way back to the input's rate,
so only its latent is held whole: memory stays flat for an hour of music. Stereo songs are
transferred as their mid, (L + R) / 2, and given back the source's image (stereo.py).

    song (N_in, channels) at sr -> mid 16 kHz (N,) -> spec (1, 1, 128, T) -> z (1, 4, 32, T/4)
    z -> windows (n, 4, 32, W) -> predictions averaged -> z_tgt -> spec_tgt -> wave (N,) -> sr
    wave at sr + the source's stereo image -> (N_in, channels)
"""
import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import audio_io
import autoencoder as ae_lib
import data
import diffusion
import distill
import plot
import stereo
import unet
from metrics import Stopwatch, no_stopwatch
from models import CKPT_DIR, load_models, load_stage
from stft import griffin_lim

# The teacher's defaults (ldm.pt alone, or --teacher): the pick of the strength x guidance
# sweep on the validation split (results/SWEEP.md): inversion at 0.9 with w = 3 names the
# target style 100% of the time and keeps the most notes of the settings that do.
STRENGTH = 0.9          # t_start / T of SDEdit or inversion: higher moves further from the source
MODE = "inversion"      # or "sdedit"
STEPS = 10              # denoising steps
GUIDANCE = 3.0          # classifier-free guidance weight w (1 = no guidance)
REFINE = 1              # inversion: fixed-point refinements a step (diffusion.ddim_invert)
# The student's (distill.pt, used when present), at the steps it was distilled for, one
# U-Net call a step (5 a window with inversion's): inverted, not from noise, because from
# noise a real recording reaches the output only through the paired U-Net's source channels,
# trained on renders (real set: 0.30 content kept from noise, 0.56 inverted; checkpoints/README).
# w = 5: on val as far from the source as the teacher's defaults (checkpoints/README).
STUDENT = dict(mode="inversion", strength=0.9, guidance=5.0, refine=1)
WARM_START = "extrapolate"  # inversion's first guess per step (diffusion.ddim_invert)
SEED = 0
GRIFFIN_LIM_ITERS = 64
PROJECTIONS = 4         # GuideDiff's mel projections on a transfer's log-mel: 4 score as its
                        # stored 16 there (val: FAD-C 84.0 vs 83.6, 0: 90.8) at 45% of the time
WINDOW = 64             # latent frames per window (4.1 s): the ldm's training crop
OVERLAP = 4             # latent frames shared by neighbouring windows (at least)
WINDOW_BATCH = 16       # windows per U-Net call: memory stays flat on long songs
AE_CHUNK = 2048         # log-mel frames per autoencoder call (33 s), ...
AE_MARGIN = 64          # ... each with this much context either side (autoencoder.in_chunks)
BLOCK_SECONDS = 30.0    # songs stream through the models in blocks this long, ...
BLOCK_MARGIN = 2.0      # ... each with this much context either side (dropped afterwards)
MEMORY_BASE = 1.2e9     # bytes a transfer needs (peak 0.99 GB for a 3-minute song, README)
MEMORY_PER_HOUR = 0.3e9  # and more for each hour of audio (the latents held whole)


# ---------------------------------------------------------------- the transfer

def defaults(models, **given):
    """The transfer's settings: those given (not None), the rest from the student's
    defaults when models has one, else the teacher's."""
    own = (dict(STUDENT, steps=models.student_steps) if models.student is not None else
           dict(mode=MODE, strength=STRENGTH, steps=STEPS, guidance=GUIDANCE, refine=REFINE))
    own["sampler"] = "ddim"
    return {k: own[k] if given.get(k) is None else given[k] for k in own}


@torch.no_grad()
def stylize(models, z, context, *, source_context=None, strength, mode, steps, guidance,
            sampler="ddim", refine=REFINE, generator=None, noise=None, window=WINDOW,
            overlap=OVERLAP, progress=False, warm_start=WARM_START):
    """A song's scaled latent (1, C, F, L) -> the same music under the style tokens
    `context` (1, M, D), as a latent (1, C, F, L).

    SDEdit (Meng et al. 2022: noise to t_start = strength (T - 1), denoise under the
    target) or DDIM inversion under the source's own tokens (diffusion.transfer), over
    windows. SDEdit takes its noise as an argument (drawn from `generator` over the whole
    latent when None), so that one noise tensor can be shared by a song and its parts.
    Inversion needs source_context; warm_start ("extrapolate" or "previous"; "off" for
    none: diffusion.ddim_invert) saves one U-Net call a step of it; refine: its fixed-point
    refinements a step (0: the first step is the classic one-call DDIM inversion step).
    With a student (models.student) guidance is its input, one call a step, and inversion
    runs it at w = 1.
    sampler: "ddim", or "dpm" for DPM-Solver++(2M) (diffusion.dpm_solver_sample)."""
    assert mode in ("sdedit", "inversion"), mode
    ldm, student = models.ldm, models.student

    def net(w):                              # the U-Net over the song's windows
        unet_model = ldm.unet if student is None else distill.with_guidance(student, w)
        return diffusion.windowed(unet_model, z.shape[-1], window, overlap, WINDOW_BATCH,
                                  bf16=models.bf16, cond=z if ldm.paired else None)
    prediction, t_start = ldm.c.prediction, int(round(strength * (ldm.sched.T - 1)))
    windows = len(diffusion.window_starts(z.shape[-1], window, overlap))

    def bar(desc):
        return (lambda loop: tqdm(loop, desc=f"{desc} (windows: {windows})", unit="step",
                                  leave=False)) if progress else None
    if mode == "inversion":                  # deterministic: the conditional model alone
        x_t = diffusion.ddim_invert(net(1.0), ldm.sched, z, source_context, steps,
                                    t_end=t_start, prediction=prediction,
                                    fixed_point_iters=refine, warm_start=warm_start,
                                    progress=bar("inverting"))
    else:
        if noise is None:
            noise = torch.randn(z.shape, generator=generator)
        t = torch.full((1,), t_start, device=z.device, dtype=torch.long)
        x_t = diffusion.q_sample(ldm.sched, z, t, noise.to(z))
    sample = diffusion.dpm_solver_sample if sampler == "dpm" else diffusion.ddim_sample
    return sample(net(guidance), ldm.sched, x_t, context, steps,
                                 guidance=guidance if student is None else 1.0,
                                 null_context=ldm.style.null_context(1), t_start=t_start,
                                 prediction=prediction, progress=bar("denoising"))


@torch.no_grad()
def vocode(models, spec, length, seed=SEED, start=0):
    """Log-mel (1, 1, n_mels, T) -> wave (1, length) with GuideDiff, or Griffin-Lim. start:
    the spectrogram's first frame in the song (frame `start` is sample start * hop)."""
    a = models.cfg.audio
    if models.vocoder is not None:
        noise = diffusion.positional_noise(start * a.hop, start * a.hop + length, seed, (1,))
        with torch.autocast(spec.device.type, dtype=torch.bfloat16, enabled=models.bf16):
            return models.vocoder.vocode(spec, noise_levels=models.noise_levels, noise=noise,
                                         length=length, projections=PROJECTIONS).float()
    magnitude = models.logmel.mel_to_magnitude(spec)                         # (1, F, T)
    phase = diffusion.positional_noise(start, start + spec.shape[-1], seed, magnitude.shape[:2],
                             torch.rand, diffusion.NOISE_BLOCK // a.hop)
    return griffin_lim(magnitude, a.n_fft, a.hop, n_iter=GRIFFIN_LIM_ITERS, length=length,
                       phase=phase.to(magnitude))


def check_request(models, style, ref, *, strength, mode, steps, guidance, sampler, refine):
    """User errors in a request, as one ValueError each (before any work is done); -> the
    style's name as the model spells it (names are case-insensitive)."""
    if (style is None) == (ref is None):
        raise ValueError("give a target STYLE (see --list-styles) or a --ref clip, not both")
    if style is not None:
        style = audio_io.closest(style, models.styles)
    if not 0.0 <= strength <= 1.0 or steps < 1 or guidance < 0 or refine < 0:
        raise ValueError("need 0 <= strength <= 1, steps >= 1, guidance >= 0 and refine >= 0")
    if mode not in ("sdedit", "inversion") or sampler not in ("ddim", "dpm"):
        raise ValueError(f"unknown mode {mode!r} or sampler {sampler!r}; use 'sdedit' or "
                         f"'inversion', 'ddim' or 'dpm'")
    if ref is not None and audio_io.is_silent(ref[0]):
        raise ValueError("the reference clip is silent; give a clip of the style you want")
    return style


def log_mel(models, wave, sr):
    """Mono wave (N,) at sr -> normalised log-mel (1, 1, n_mels, T) at the model's rate."""
    a = models.cfg.audio
    wave = data.resample(wave, sr, a.sample_rate)
    wave = np.pad(wave, (0, max(0, a.n_fft - len(wave))))      # the STFT needs n_fft / 2 + 1
    return models.logmel(torch.from_numpy(wave).to(models.device)[None])


def blocks(models, sr, N):
    """How a song of N samples at sr is streamed: [(lo, s, e, hi)] in input samples, block
    s..e read with context lo..hi. Every edge falls on a whole latent frame and on a whole
    sample at both rates, so the blocks' latents join into the whole song's."""
    a, f = models.cfg.audio, models.autoencoder.factor
    g = math.gcd(sr, a.sample_rate)
    up, down = a.sample_rate // g, sr // g
    q16 = math.lcm(up, a.hop * f)                            # model-rate samples
    q = q16 * down // up                                     # input samples
    block, margin = (q * max(1, math.ceil(seconds * sr / q))
                     for seconds in (BLOCK_SECONDS, BLOCK_MARGIN))
    return [(max(s - margin, 0), s, min(s + block, N), min(s + block + margin, N))
            for s in range(0, N, block)]


def transfer_stream(source, write, style=None, *, models, ref=None, strength=None,
                    mode=None, steps=None, guidance=None, sampler=None, refine=None, seed=SEED,
                    mono=False, progress=True, warm_start=WARM_START, stopwatch=no_stopwatch):
    """transfer() over an audio_io.Source read in blocks, each output block passed to
    write((samples, channels) float32) in order: memory stays flat for any length (the
    whole song is held only as its latent, 4 x 32 floats per 64 ms). Returns False when the
    source is silent (then silence was written, and no model ran). Settings left None
    take transfer.defaults(models)."""
    settings = defaults(models, strength=strength, mode=mode, steps=steps, guidance=guidance,
                        sampler=sampler, refine=refine)
    style = check_request(models, style, ref, **settings)
    a, dev, f, scale, ae = (models.cfg.audio, models.device, models.autoencoder.factor,
                            models.latent_scale, models.autoencoder)
    sr, N = source.sr, source.frames
    rate = a.sample_rate

    def at_model_rate(v):                    # input samples -> model-rate samples (exact
        return v * rate // sr                # on block edges; the song's end rounds up)
    n = -(-N * rate // sr)                   # = len(data.resample(song, sr, rate))
    T = 1 + n // a.hop                       # frames of the unpadded song
    plan, R = blocks(models, sr, N), models.cfg.ldm.ref_frames
    starts = unet.crop_starts(T, R) if T >= R else []
    crops, peak, latents = [torch.zeros(1, 1, a.n_mels, R) for _ in starts], 0.0, []
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=models.bf16)
    for lo, s, e, hi in tqdm(plan, desc="encoding", unit="block", leave=False,
                             disable=not progress or len(plan) < 2):
        with stopwatch("log-mel and style tokens"):
            block = source.read(lo, hi)                                 # (hi - lo, channels)
            peak = max(peak, float(np.abs(block).max()))
            x = data.resample(block.mean(1), sr, a.sample_rate)
            if len(plan) == 1:   # shorter than one window: pad with silence, so the U-Net
                x = np.pad(x, (0, max(0, (WINDOW * f - 1) * a.hop - len(x))))   # sees its size
            spec = log_mel(models, x, a.sample_rate)                    # (1, 1, n_mels, T')
            k0, k1, k2 = (at_model_rate(v) // a.hop for v in (lo, s, e))  # frames: read from,
            if len(plan) == 1:                                              # kept part
                k1, k2 = 0, spec.shape[-1]
            for crop, c in zip(crops, starts):   # the style crops this block holds, copied
                i, j = max(c, k1), min(c + R, k2 if e < N else T)
                if i < j:
                    crop[..., i - c:j - c] = spec[..., i - k0:j - k0]
            if T < R:
                source_spec = spec[..., :T]
        with stopwatch("encoder"), autocast:
            z = ae_lib.in_chunks(lambda y: ae.encode(y).mode(), spec, AE_CHUNK, AE_MARGIN, 1 / f)
            latents.append(z.float()[..., (k1 - k0) // f:None if e == N else (k2 - k0) // f])
    if peak < audio_io.SILENCE_PEAK:
        for lo, s, e, hi in plan:
            write(np.zeros((e - s, 1 if mono else source.channels), np.float32))
        return False
    z = torch.cat(latents, -1) * scale                                  # (1, C, F, L)
    with stopwatch("log-mel and style tokens"):
        if ref is not None:
            context = unet.reference_tokens(models.ldm.style, log_mel(models, ref[0] if
                                       ref[0].ndim == 1 else ref[0].mean(1), ref[1]), R)
        else:
            label = torch.tensor([models.styles.index(style)], device=dev)
            context = models.ldm.style.from_labels(label)                   # (1, M, D)
        # A user's song has no source label: its own tokens name its style (the ldm is
        # trained so that reference tokens match label tokens).
        source_context = None if settings["mode"] != "inversion" else \
            unet.reference_tokens(models.ldm.style, source_spec, R) if T < R else \
            unet.crop_tokens(models.ldm.style, [c.to(dev) for c in crops])
    with stopwatch("U-Net sampling"):
        z_tgt = stylize(models, z, context, source_context=source_context, **settings,
                        generator=torch.Generator().manual_seed(seed), progress=progress,
                        warm_start=warm_start) / scale
    for lo, s, e, hi in tqdm(plan, desc="decoding", unit="block", leave=False,
                             disable=not progress or len(plan) < 2):
        l0 = at_model_rate(lo) // (a.hop * f)
        l1 = None if hi == N else -(-at_model_rate(hi) // (a.hop * f))
        with stopwatch("decoder"), autocast:
            spec = ae_lib.in_chunks(ae.decode, z_tgt[..., l0:l1], AE_CHUNK // f, AE_MARGIN // f, f)
        k0 = l0 * f                                                 # its first frame
        with stopwatch("vocoder"):
            spec = spec.float()[..., :T - k0]
            length = n - k0 * a.hop if hi == N else a.hop * (spec.shape[-1] - 1)
            wave = vocode(models, spec, length, seed, k0)
            wave = wave[0].float().cpu().numpy()
        with stopwatch("log-mel and style tokens"):     # the way back to the input's rate
            start = k0 * a.hop * sr // rate                         # = lo on block edges
            wave = data.resample(wave, rate, sr)[:hi - start]
            wave = np.pad(wave, (0, hi - start - len(wave)))        # (hi - start,)
        with stopwatch("stereo"):
            if source.channels == 2 and not mono:                   # with context, then cut
                wave = stereo.widen(wave, source.read(start, hi), sr)[s - start:e - start]
            else:
                wave = wave[s - start:e - start, None]
        write(audio_io.soft_limit(wave.astype(np.float32)))     # no clipping in PCM files
    return True


def transfer(wave, sr, style=None, *, ref=None, strength=None, mode=None, steps=None,
             guidance=None, sampler=None, refine=None, vocoder=None, seed=SEED, device="cpu",
             ckpt_dir=CKPT_DIR,
             progress=True, models=None, warm_start=WARM_START, stopwatch=no_stopwatch,
             mono=False):
    """The same music in another style: wave (N,) or (N, 2) at sr -> (float32 of the same
    shape, sr); mono=True makes a stereo song's output mono (N,). The target is a style
    name (see Models.styles; any case) or ref = (wave, sr), a clip to take the style from.
    vocoder: "guidediff", "griffinlim" or None (GuideDiff if a finished checkpoint exists).
    models: from load_models, to load once for many calls (it then fixes ckpt_dir, vocoder
    and device). stopwatch: a Stopwatch, to time the stages."""
    models = models or load_models(ckpt_dir, vocoder, device)
    source = audio_io.Source(wave, sr)
    out = []
    transfer_stream(source, out.append, style, models=models, ref=ref, strength=strength,
                    mode=mode, steps=steps, guidance=guidance, sampler=sampler, refine=refine,
                    seed=seed, mono=mono, progress=progress, warm_start=warm_start,
                    stopwatch=stopwatch)
    out = np.concatenate(out)
    return (out[:, 0] if np.ndim(wave) == 1 or mono else out), sr


# ---------------------------------------------------------------- entry point
class Parser(argparse.ArgumentParser):
    def error(self, message):               # one line, like every other error here
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser():
    p = Parser(prog="transfer.py", usage="%(prog)s INPUT [INPUT ...] STYLE [options]\n"
               "       %(prog)s INPUT [INPUT ...] (--style STYLE | --ref CLIP) [options]",
               description="The same music in another style: latent diffusion style transfer "
               "(arXiv 2404.14771). Reads WAV, FLAC or OGG, mono or stereo, at any sample rate "
               "and length; writes each output at its input's rate, duration and channels "
               "(the model hears the mid, (L + R) / 2, and stereo outputs get the source's "
               "stereo image back). Several inputs and folders (searched for audio files) "
               "run in one call, the models loaded once; a bad file is reported and the rest "
               "still run (exit status 2 at the end).")
    p.add_argument("items", nargs="*", metavar="INPUT... STYLE",
                   help="songs or folders, then the target style (any case; see "
                        "--list-styles) unless --style or --ref gives it")
    p.add_argument("--style", help="the target style, when every positional is an input")
    p.add_argument("-o", "--output", metavar="OUT", help="output file, .wav/.flac/.ogg (one "
                   "input), or a folder (default: INPUT.STYLE.wav beside each INPUT)")
    p.add_argument("--ref", metavar="REF", help="take the style from this clip instead")
    p.add_argument("--strength", type=float, help="0..1, how far to move from the source "
                   f"(default {STUDENT['strength']} with the student, {STRENGTH} with --teacher)")
    p.add_argument("--mode", choices=("sdedit", "inversion"), help="noise the song (sdedit) "
                   "or invert it under its own style (deterministic); default "
                   f"{STUDENT['mode']} with the student, {MODE} with --teacher")
    p.add_argument("--steps", type=int, help="denoising steps (default: the student's own, "
                   f"{STEPS} with --teacher)")
    p.add_argument("--guidance", type=float, help="guidance weight w (default "
                   f"{STUDENT['guidance']} with the student, {GUIDANCE} with --teacher)")
    p.add_argument("--sampler", choices=("ddim", "dpm"), help="DDIM (default) or "
                   "DPM-Solver++(2M), a second-order solver that pays with many steps")
    p.add_argument("--refine", type=int, help="inversion: fixed-point refinements a step "
                   f"(default {STUDENT['refine']} with the student, {REFINE} with --teacher)")
    p.add_argument("--teacher", action="store_true", help="use ldm.pt itself, not its "
                   "few-step student distill.pt (when there is one): slower")
    p.add_argument("--vocoder", choices=("guidediff", "griffinlim"),
                   help="default: guidediff if a finished CKPT_DIR/guidediff.pt exists, "
                        "else griffinlim")
    p.add_argument("--warm-start", choices=diffusion.WARM_STARTS,
                   default=WARM_START, help="inversion: each step's first guess of the noise "
                   "from the previous steps' (extrapolated, or the last one as it is), or "
                   "'off': from a U-Net call, one more call a step (40 U-Net calls instead of 31 "
                   "at the defaults); default %(default)s")
    p.add_argument("--mono", action="store_true", help="write mono outputs for stereo inputs")
    p.add_argument("--seed", type=int, default=SEED, help="default %(default)s")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the networks: faster per call, but the first call "
                        "compiles for a while (worth it for long songs or many calls)")
    p.add_argument("--fp32", action="store_true",
                   help="float32 everywhere (default: bfloat16 autocast for the U-Net and "
                        "GuideDiff)")
    p.add_argument("--plot", metavar="PNG", help="also draw the source and output log-mels "
                   "(a folder when there are several inputs: OUT.png for each)")
    p.add_argument("--timing", action="store_true",
                   help="print the compute seconds of each stage and the real-time factor")
    p.add_argument("--list-styles", action="store_true", help="print the style names and exit")
    p.add_argument("--ckpt-dir", default=str(CKPT_DIR), help="default: checkpoints/ beside "
                   "this file")
    return p


def split_items(args):
    """(inputs, style) from the positionals: the last one is the style unless --style or
    --ref names the target."""
    items = list(args.items)
    if args.style is not None or args.ref is not None:
        last = Path(items[-1]) if items else Path("-.wav")   # a style name given too?
        if args.style is not None and args.ref is not None or not last.exists() \
                and last.suffix.lower() not in data.AUDIO_EXTS:
            raise ValueError("give a target STYLE or a --ref clip, not both")
        style = args.style
    else:
        style = items.pop() if len(items) >= 2 else None
        if style is not None and Path(style).exists() and Path(style).suffix:
            raise ValueError(f"the last argument {style} is a file; give the target STYLE "
                             f"after the inputs (see --list-styles) or use --style")
    if not items or (style is None and args.ref is None):
        raise ValueError("give INPUT... and a STYLE (see --list-styles), or INPUT... and "
                         "--ref CLIP")
    return items, style


def transfer_file(models, source, out, fmt, args, style, ref, plot_path=None):
    """One input file (an audio_io.Source) to one output file, streamed; nothing is left
    on failure."""
    path = source.path
    channels = 1 if args.mono else source.channels
    stopwatch = Stopwatch(args.device) if args.timing else no_stopwatch
    pictures = [[], []]                      # the mids of source and output, for --plot
    t0 = time.perf_counter()
    with audio_io.atomic_output(out) as f, \
            sf.SoundFile(f, "w", source.sr, channels, format=fmt) as sink:
        def write(block):
            sink.write(block)
            if plot_path:
                pictures[1].append(block.mean(1))
        sounded = transfer_stream(source, write, style, models=models, ref=ref,
                                  strength=args.strength, mode=args.mode, steps=args.steps,
                                  guidance=args.guidance, sampler=args.sampler,
                                  refine=args.refine, seed=args.seed, mono=args.mono,
                                  warm_start=args.warm_start, stopwatch=stopwatch)
    if not sounded:
        print(f"warning: {path} is silent; wrote silence to {out}", file=sys.stderr)
    if args.timing:
        seconds = dict(stopwatch.seconds, total=time.perf_counter() - t0)
        print("; ".join(f"{k} {v:.1f} s" for k, v in seconds.items()) + f"; real-time "
              f"factor {seconds['total'] * source.sr / source.frames:.3f} (model loading not "
              f"counted)", file=sys.stderr)
    if plot_path:
        mids = [source.read(0, source.frames).mean(1), np.concatenate(pictures[1])]
        specs = [log_mel(models, w, source.sr)[0, 0].cpu().numpy() for w in mids]
        title = style or f"ref {Path(args.ref).stem}"
        audio_io.write_bytes(plot_path, plot.png_bytes(plot.figure(
            *specs, models.cfg.audio, titles=(f"source: {Path(path).name}", title))))


def run(args):
    if args.list_styles:
        print("\n".join(load_stage(args.ckpt_dir, "ldm", lambda c: c["styles"])[0]))
        return 0
    items, style = split_items(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA is not available here; use --device cpu")
    ref = audio_io.read_audio(args.ref, "reference") if args.ref else None
    models = load_models(args.ckpt_dir, args.vocoder, args.device, args.compile,
                         bf16=not args.fp32, teacher=args.teacher)
    style = check_request(models, style, ref, **defaults(
        models, strength=args.strength, mode=args.mode, steps=args.steps,
        guidance=args.guidance, sampler=args.sampler, refine=args.refine))
    name = style or Path(args.ref).stem
    inputs = audio_io.find_inputs(items, [f".{s}{e}".lower() for s in models.styles
                                          for e in data.AUDIO_EXTS])
    several = len(inputs) > 1 or any(Path(i).is_dir() for i in items)
    if several and args.output and not Path(args.output).is_dir():
        raise ValueError(f"-o {args.output} must be an existing folder when there are several "
                         f"inputs")
    if args.plot and not (Path(args.plot).is_dir() if several
                          else Path(args.plot).resolve().parent.is_dir()):
        raise ValueError(f"--plot {args.plot} must be " + ("an existing folder with several "
                         "inputs" if several else "in an existing folder"))
    failed, done = 0, set()
    for path, problem in inputs:
        try:
            if problem:
                raise ValueError(problem)
            out, fmt = audio_io.output_path(path, name, args.output, folder=several)
            if out in done:
                raise ValueError(f"{path} would overwrite {out}, written in this call; "
                                 f"rename one of the inputs")
            plot_path = args.plot and (Path(args.plot) / f"{out.stem}.png" if several
                                       else Path(args.plot))
            source = audio_io.open_audio(path)
            audio_io.check_memory(MEMORY_BASE + MEMORY_PER_HOUR * source.frames / source.sr
                                  / 3600, f"{path} ({source.frames / source.sr / 60:.0f} min)")
            if args.vocoder is None and not done:
                print(f"note: {models.note}", file=sys.stderr)
            transfer_file(models, source, out, fmt, args, style, ref, plot_path)
            done.add(out)
            print(out)
        except (ValueError, OSError, MemoryError) as e:
            failed += 1
            print(f"transfer.py: error: {one_line(e)}", file=sys.stderr)
    if failed and len(inputs) > 1:
        print(f"transfer.py: {failed} of {len(inputs)} inputs failed", file=sys.stderr)
    return 2 if failed else 0


def one_line(e):
    if isinstance(e, MemoryError):
        return "not enough memory for this song; close other programs or split the song"
    return " ".join(str(e).split())


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with audio_io.signals_raise():
            code = run(args)
    except KeyboardInterrupt:
        print("transfer.py: interrupted; the output being written was removed",
              file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, OSError, MemoryError) as e:
        print(f"transfer.py: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2)
    if code:
        raise SystemExit(code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
