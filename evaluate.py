"""The evaluation: the systems it scores (metrics.score_system scores them), and the run.

    python train.py --stage eval      -> results/results.json and results/RESULTS.md

One run scores every system on the paired test split once, for the report, and makes the
tuning tables (vocoder settings, inversion round trips) on the validation split, where the
defaults are chosen; `--sweep` (the LDM's strength x guidance grid, also on val) writes
results/sweep.json and SWEEP.md of its own. The transfer row is `transfer.transfer()` with
its defaults, the function `python transfer.py` runs, so the table measures what users get.

    system(wave (N,), source style, target style, piece) -> wave (N',) or (wave, seconds)
    metrics.score_system(system, split, judge) -> {metric: value}, over every ordered style pair
"""
import copy
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import audio_io
import baselines
import config
import data
import diffusion
import evaluate_real
import metrics
import report
import speed
import transfer as transfer_lib
from stft import LogMel, griffin_lim

EVAL_PIECES = 12         # pieces of each split scored: 360 transfers of 12 s, about an hour
GRIFFIN_LIM_ITERS = 64
VOCODER_STEPS = (1, 2, 4, 8)             # GuideDiff tuning rows (val): steps at the default
PROJECTION_ROWS = (0, 4, 8, 16, 32)       # projections, and projections at the default steps
SWEEP = dict(mode=("sdedit", "inversion"), strength=(0.5, 0.7, 0.9, 1.0), guidance=(1.0, 3.0, 5.0))


# ---------------------------------------------------------------- loading
def load_classifier(ckpt_dir):
    ckpt = config.load_checkpoint(Path(ckpt_dir) / "classifier.pt", "classifier")
    return metrics.classifier_from_checkpoint(ckpt), ckpt["styles"], \
        config.config_from_dict(ckpt["config"])


def load_split(root, name, sample_rate, styles, pieces=None, seconds=None):
    waves, found = data.load_paired_split(root, name, sample_rate, pieces=pieces)
    if found != styles:
        raise ValueError(f"the classifier knows styles {styles} but {root}/{name} has {found}; "
                         f"retrain it with `python train.py --stage classifier`")
    if seconds:
        waves = {k: w[:int(seconds * sample_rate)] for k, w in waves.items()}
    return metrics.Split(waves, styles, name)


def load_scores(root):
    """{piece id: note events} from the built-in dataset's metadata.json."""
    meta = json.loads((Path(root) / "metadata.json").read_text())
    return {p["id"]: p["events"] for p in meta["pieces"]}


# ---------------------------------------------------------------- systems
def griffin_lim_wave(logmel, audio, spec, length):
    """Log-mel (1, 1, n_mels, T) -> wave (length,) by Griffin-Lim, fixed seed."""
    return griffin_lim(logmel.mel_to_magnitude(spec), audio.n_fft, audio.hop,
                       n_iter=GRIFFIN_LIM_ITERS, length=length,
                       generator=torch.Generator().manual_seed(0))[0]


def reference_systems(split, logmel, audio):
    """The rows every other number is read against: ({transfer rows}, {resynthesis rows})."""
    ids, waves = split.pieces, split.waves

    def griffin_lim_resynthesis(wave, src, tgt, piece):
        return griffin_lim_wave(logmel, audio, logmel(waves[piece, tgt][None]), len(wave))

    return {
        "oracle (target-style ground truth)": lambda w, s, t, p: waves[p, t],
        "identity (source unchanged)": lambda w, s, t, p: w,
        "random target (other piece, target style)":
            lambda w, s, t, p: waves[ids[(ids.index(p) + 1) % len(ids)], t],
    }, {f"Griffin-Lim, {GRIFFIN_LIM_ITERS} it. (ground-truth log-mel)": griffin_lim_resynthesis}


def transfer_system(models, sample_rate, **settings):
    """The pipeline users run: transfer.transfer(wave, sr, target, **settings), models
    loaded once (transfer.load_models). settings: its keyword arguments (strength, mode,
    steps, guidance, warm_start, seed); none given means its defaults."""
    def system(wave, src, tgt, piece):
        out, _ = transfer_lib.transfer(wave.numpy(), sample_rate, tgt, models=models,
                                       progress=False, **settings)
        return torch.from_numpy(out)
    return system


class _KeepSpec:
    """A stand-in vocoder for transfer.transfer_stream: keeps the log-mel it is given."""

    def __init__(self):
        self.specs = []

    def vocode(self, spec, length, **_):
        self.specs.append(spec[0].float().cpu())                # (1, n_mels, T)
        return torch.zeros(1, length)


class _KeepLatent:
    """The autoencoder, keeping each latent its decoder is given."""

    def __init__(self, autoencoder):
        self.autoencoder, self.factor, self.latents = autoencoder, autoencoder.factor, []

    def encode(self, spec):
        return self.autoencoder.encode(spec)

    def decode(self, z, length=None):
        self.latents.append(z[0].float().cpu())                # (C, F, L), unscaled
        return self.autoencoder.decode(z, length)


def transfer_log_mels(ckpt_dir, jobs, sample_rate, device="cpu", latents=False):
    """[log-mel (1, n_mels, T) or None] of [(wave (N,), target style)]: the default
    transfer's output before the vocoder (what GuideDiff meets in use;
    GuideDiffConfig.transfer_guides), frame-aligned with the wave. None for a wave longer
    than one streamed block.
    latents=True: [latent (C, F, T / f) or None] instead, what the decoder meets in use
    (AutoencoderConfig.transfer_latents)."""
    models = copy.copy(transfer_lib.load_models(ckpt_dir, vocoder="griffinlim", device=device))
    models.vocoder, out = _KeepSpec(), []
    models.autoencoder = keep = _KeepLatent(models.autoencoder)
    for wave, style in tqdm(jobs, desc="transfer latents" if latents else "transfer guides"):
        if len(wave) > transfer_lib.BLOCK_SECONDS * sample_rate:
            out.append(None)                               # one block: one log-mel
            continue
        transfer_lib.transfer_stream(audio_io.Source(wave, sample_rate), lambda _: None, style,
                                     models=models, progress=False)
        out.append(keep.latents.pop() if latents else models.vocoder.specs.pop())
        keep.latents.clear()
    return out


def transfer_row_name(models, teacher=False, **settings):
    """teacher: models were loaded with load_models(teacher=True) though a student exists."""
    s = transfer_lib.defaults(models, **settings)
    vocoder = "GuideDiff" if models.vocoder is not None else "Griffin-Lim"
    which = "transfer.py" + (" --teacher" if teacher else "") + ("" if settings else " defaults")
    unet = f"{models.student_steps}-step student" if models.student is not None else "LDM"
    sampler = ", DPM-Solver++(2M)" if s["sampler"] == "dpm" else ""
    return (f"{which}: {unet} {s['mode']} (strength {s['strength']}, w={s['guidance']}, "
            f"{s['steps']} steps{sampler}) + {vocoder}")


# Issue 19's rows beside the default, as settings: the teacher from noise at few steps
# (DDIM, and DPM-Solver++ with no training), inverting at fewer steps; the student on the
# other content paths at about its cost (from noise, and SDEdit at 0.9).
TEACHER_ROWS = [dict(), dict(mode="sdedit", strength=1.0, guidance=2.0, steps=2),
                dict(mode="sdedit", strength=1.0, guidance=2.0, steps=4),
                dict(mode="sdedit", strength=1.0, guidance=2.0, steps=4, sampler="dpm"),
                dict(mode="inversion", strength=0.9, steps=2)]
STUDENT_ROWS = [dict(mode="sdedit", strength=1.0, guidance=2.0), dict(mode="sdedit", strength=0.9)]


def few_step_systems(ckpt_dir, device, models, sr):
    """{name: (system, models, settings)} of TEACHER_ROWS (ldm.pt without its student) and
    STUDENT_ROWS (when there is a student)."""
    rows, teacher = {}, models
    if models.student is not None:
        for settings in STUDENT_ROWS:
            rows[transfer_row_name(models, **settings)] = (
                transfer_system(models, sr, **settings), models, settings)
        teacher = transfer_lib.load_models(ckpt_dir, device=device, teacher=True)
    for settings in TEACHER_ROWS if models.student is not None else TEACHER_ROWS[1:]:
        rows[transfer_row_name(teacher, teacher=True, **settings)] = (
            transfer_system(teacher, sr, **settings), teacher, settings)
    return rows


def guidediff_systems(gd, logmel, device, steps_rows=VOCODER_STEPS,
                      projection_rows=PROJECTION_ROWS, bf16=False):
    """Resynthesis rows: GuideDiff from the ground-truth log-mel at each stored step count
    (default projections), and at the default step count with other projection counts.
    bf16: autocast, as the pipeline does where it pays (Models.bf16)."""
    def system(steps, projections):
        def resynthesise(wave, src, tgt, piece):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                return gd.vocode(logmel(wave[None]), steps, length=len(wave),
                                 generator=torch.Generator().manual_seed(0),
                                 projections=projections)[0].float()
        return resynthesise

    def name(k, p):
        return (f"GuideDiff, {k} step{'s' * (k > 1)}" +
                (f" + {p} mel projections" if p else ", no mel projection") +
                " (ground-truth log-mel)")
    settings = [(k, gd.projections) for k in steps_rows if k in gd.schedules] + \
        [(gd.default_steps, p) for p in projection_rows if p != gd.projections]
    return {name(k, p): system(k, p) for k, p in settings}


def round_trip_systems(models):
    """Resynthesis rows: the autoencoder's round trip, heard through Griffin-Lim and through
    the pipeline's vocoder (transfer.vocode)."""
    def system(vocode):
        @torch.no_grad()
        def round_trip(wave, src, tgt, piece):
            spec = models.logmel(wave[None])
            z = models.autoencoder.encode(spec).mode()
            return vocode(models.autoencoder.decode(z, length=spec.shape[-1]), len(wave))
        return round_trip
    audio = models.cfg.audio
    rows = {f"autoencoder round trip + Griffin-Lim {GRIFFIN_LIM_ITERS} it.": system(
        lambda spec, n: griffin_lim_wave(models.logmel, audio, spec, n))}
    if models.vocoder is not None:
        rows["autoencoder round trip + GuideDiff"] = system(
            lambda spec, n: transfer_lib.vocode(models, spec, n)[0].float())
    return rows


def baseline_systems(ckpt_dir, cfg, logmel, split):
    """({row: system} for transfer, {row: system} for resynthesis) of the trained baselines."""
    transfer, resynthesis = {}, {}
    for name in baselines.NAMES:
        m = baselines.module(name)
        (transfer if m.KIND == "transfer" else resynthesis).update(
            m.systems(ckpt_dir, cfg, logmel, split.styles, split.waves))
    return transfer, resynthesis


# ---------------------------------------------------------------- scoring
def score_rows(systems, split, judge, resynthesis=False, references=(), keep=report.Keep()):
    rows = {}
    for name, system in tqdm(systems.items(), desc=f"scoring on {split.name}"):
        rows[name] = keep(f"{split.name} {resynthesis} {name}",
                          lambda: metrics.score_system(system, split, judge, resynthesis))
        if name in references:              # returning stored audio costs nothing
            rows[name].pop("rtf", None)
    return rows


# ---------------------------------------------------------------- tuning (val)
@torch.no_grad()
def inversion_round_trips(models, split, strength=transfer_lib.STRENGTH,
                          steps=transfer_lib.STEPS, seconds=4.0):
    """How exact each first guess of diffusion.ddim_invert is on the trained model: invert
    the first `seconds` of every clip under its own style (one refinement a step, as
    transfer.py does), regenerate under the same style, and measure the latent's relative
    error and the U-Net calls."""
    ldm, ae, sr = models.ldm, models.autoencoder, models.cfg.audio.sample_rate
    keys = sorted(split.waves)
    spec = torch.cat([models.logmel(split.waves[k][None, :int(seconds * sr)]) for k in keys])
    z = ae.encode(spec).mode() * models.latent_scale
    context = ldm.style.from_labels(torch.tensor([models.styles.index(s) for _, s in keys]))
    t_end = int(round(strength * (ldm.sched.T - 1)))
    calls, rows = [], {}

    def net(x_t, t, c):                      # a paired U-Net also sees the source latent
        return ldm.unet(torch.cat([x_t, z.to(x_t)], 1) if ldm.paired else x_t, t, c)

    def unet(*a):
        calls.append(1)
        return net(*a)
    for warm_start in tqdm(diffusion.WARM_STARTS, desc="inversion round trips"):
        calls.clear()
        with torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=models.bf16):
            x_t = diffusion.ddim_invert(unet, ldm.sched, z, context, steps, t_end,
                                        prediction=ldm.c.prediction, fixed_point_iters=1,
                                        warm_start=warm_start)
            n_calls = len(calls)
            back = diffusion.ddim_sample(net, ldm.sched, x_t.float(), context, steps,
                                         t_start=t_end, prediction=ldm.c.prediction).float()
        rows[warm_start] = dict(calls=n_calls, error=((back - z).norm() / z.norm()).item())
    return dict(rows=rows, latents=len(keys), steps=steps, strength=strength, seconds=seconds)


def sweep(models, split, judge):
    """The strength x guidance grid of both modes, each setting the transfer() users run;
    rows of results["sweep"], with the identity on the same clips and the pick."""
    sr = models.cfg.audio.sample_rate
    settings = [dict(mode=m, strength=s, guidance=g)
                for m in SWEEP["mode"] for s in SWEEP["strength"] for g in SWEEP["guidance"]]
    rows = [dict(s, **metrics.score_system(transfer_system(models, sr, **s), split, judge))
            for s in tqdm(settings, desc=f"sweep on {split.name}")]
    identity = metrics.score_system(lambda w, s, t, p: w, split, judge)
    return dict(rows=rows, identity=identity, pick=best_setting(rows),
                pieces=len(split.pieces), seconds=len(next(iter(split.waves.values()))) / sr)


STYLE_BAR = 95.0         # style accuracy (%) a transfer must reach (the issue-18 target)


def best_setting(rows, identity=None):
    """Of the settings that reach STYLE_BAR, the one that keeps the most notes; if none
    does, the highest style accuracy. (A transfer that does not change the style keeps
    every note, so the notes are only compared among settings that do their job.)"""
    ok = [r for r in rows if r["style_accuracy"] >= STYLE_BAR]
    best = max(ok, key=lambda r: r["notes_kept"]) if ok else \
        max(rows, key=lambda r: (r["style_accuracy"], r["notes_kept"]))
    return {k: best[k] for k in ("mode", "strength", "guidance")}


# ---------------------------------------------------------------- the run
@dataclass
class EvalOptions:
    """What `python train.py --stage eval` passes on."""
    data: str = "data/builtin"
    ckpt_dir: str = "checkpoints"
    device: str = "cpu"
    pieces: int = None          # None: the first EVAL_PIECES of each split (sweep: its own)
    rows: str = None            # development: score only rows matching this regex ...
    split: str = "test"         # ... on this split; written to rows.json, never results.json
    speed: bool = True          # the speed table (about 5 minutes)
    real: tuple = ()            # folders of real recordings: the real-set table (evaluate_real)
    real_files: int = 6         # ... excerpts from this many files of each folder
    real_tune: int = 0          # development, with --only-real: this many files of each folder
                                # from those the real_files selection leaves out (a tuning slice)
    keep: str = None            # a folder: keep each finished row there, and take those an
                                # interrupted run of this commit kept (report.Keep)
    settings: str = None        # development: transfer() settings as JSON, a row of its own
    seconds: float = None       # development: score the first `seconds` of each piece

    @classmethod
    def from_args(cls, args):
        """From train.py's arguments (--stage eval)."""
        if args.only_real and not args.real:
            raise ValueError("--only-real needs --real DIR [DIR ...]")
        if args.real_tune and not args.only_real:
            raise ValueError("--real-tune is for development runs: give --only-real too (the "
                             "report's real set is --real-files)")
        if (args.settings or args.seconds) and not (args.rows or args.only_real):
            raise ValueError("--settings and --seconds are for development runs: give --rows "
                             "REGEX (or --only-real) too")
        opts = cls(data=args.data, ckpt_dir=args.ckpt_dir, device=args.device,
                   pieces=args.pieces, rows=args.rows, split=args.split, speed=not args.no_speed,
                   real=tuple(args.real or ()), real_files=args.real_files,
                   real_tune=args.real_tune,
                   keep=str(Path(args.runs) / "eval") if args.resume else None,
                   settings=args.settings,
                   seconds=args.seconds)
        opts.transfer_settings()            # a bad --settings fails before any work
        return opts

    def transfer_settings(self):
        """--settings as (teacher, {name: value}): keyword arguments of transfer.transfer(),
        and "teacher": true for ldm.pt without its student."""
        try:
            settings = json.loads(self.settings or "{}")
            assert isinstance(settings, dict)
        except (ValueError, AssertionError):
            raise ValueError(f"--settings {self.settings!r} is not a JSON object; give e.g. "
                             f"'{{\"mode\": \"inversion\", \"guidance\": 5}}'") from None
        teacher = bool(settings.pop("teacher", False))
        known = {"strength", "mode", "steps", "guidance", "sampler", "refine", "warm_start",
                 "seed"}
        if set(settings) - known:
            raise ValueError(f"--settings: unknown {sorted(set(settings) - known)}; known: "
                             f"teacher, {', '.join(sorted(known))}")
        return teacher, settings


def setup(opts, command):
    """What every evaluation run starts from: (provenance, judge, styles, config)."""
    classifier, styles, cfg = load_classifier(opts.ckpt_dir)
    judge = metrics.Judge(classifier, LogMel(**asdict(cfg.audio)), cfg.audio.sample_rate,
                  load_scores(opts.data))
    return report.provenance(command, opts.ckpt_dir), judge, styles, cfg


def evaluate(opts, command):
    """One full evaluation (or, with opts.rows, some rows on opts.split): the results dict
    that report.save turns into results.json and RESULTS.md."""
    t_start = time.perf_counter()
    if opts.split != "test" and not opts.rows:
        raise ValueError("the report is scored on the test split; --split is for --rows "
                         "(development runs)")
    real_files = evaluate_real.find_files(opts.real, opts.real_files) if opts.real else []
    provenance, judge, styles, cfg = setup(opts, command)
    keep = report.Keep(opts.keep, provenance, asdict(opts))
    sr, logmel = cfg.audio.sample_rate, judge.logmel
    main = load_split(opts.data, opts.split, sr, styles, opts.pieces or EVAL_PIECES, opts.seconds)
    train = load_split(opts.data, "train", sr, styles, len(main.pieces), opts.seconds)
    floor = metrics.fad_basis_and_floor(main, train, judge)
    models = transfer_lib.load_models(opts.ckpt_dir, device=opts.device)
    transfer_rows, resynthesis_rows = reference_systems(main, logmel, cfg.audio)
    references = set(transfer_rows)         # stored audio: no compute to time
    costed = {transfer_row_name(models): (transfer_system(models, sr), models, {})}
    costed.update(few_step_systems(opts.ckpt_dir, opts.device, models, sr))
    own = None                              # --settings: a development row of its own
    if opts.settings:
        teacher, settings = opts.transfer_settings()
        chosen = transfer_lib.load_models(opts.ckpt_dir, device=opts.device,
                                          teacher=True) if teacher else models
        own = transfer_row_name(chosen, teacher, **settings)
        costed[own] = (transfer_system(chosen, sr, **settings), chosen, settings)
    transfer_rows.update({name: row[0] for name, row in costed.items()})
    base_transfer, base_resynthesis = baseline_systems(opts.ckpt_dir, cfg, logmel, main)
    transfer_rows.update(base_transfer)
    resynthesis_rows.update(round_trip_systems(models))
    if models.vocoder is not None:
        gd = models.vocoder
        resynthesis_rows.update(guidediff_systems(gd, logmel, opts.device, [gd.default_steps],
                                                  [], models.bf16))
    resynthesis_rows.update(base_resynthesis)
    if opts.rows:
        names = [n for n in list(transfer_rows) + list(resynthesis_rows)
                 if re.search(opts.rows, n) or n == own]
        if not names:
            raise ValueError(f"--rows {opts.rows!r} matches no row; rows: "
                             f"{', '.join(list(transfer_rows) + list(resynthesis_rows))}")
        transfer_rows = {k: v for k, v in transfer_rows.items() if k in names}
        resynthesis_rows = {k: v for k, v in resynthesis_rows.items() if k in names}
    results = dict(provenance, split=split_summary(main, sr), fad_floor=floor,
                   transfer=score_rows(transfer_rows, main, judge, False, references, keep),
                   resynthesis=score_rows(resynthesis_rows, main, judge, True, references, keep))
    wave = main.waves[main.pieces[0], styles[0]]
    for name in [n for n in costed if n in results["transfer"]]:
        results["transfer"][name].update(keep(f"cost {name}", lambda: speed.transfer_cost(
            *costed[name], wave, sr, styles[-1])))
    if not opts.rows:                       # tuning tables on val, then the speed table
        val = load_split(opts.data, "val", sr, styles, opts.pieces or EVAL_PIECES)
        tuning = dict(split=split_summary(val, sr))
        if models.vocoder is not None:
            tuning["vocoder"] = score_rows(guidediff_systems(
                models.vocoder, logmel, opts.device, bf16=models.bf16), val, judge, True, (), keep)
        short = load_split(opts.data, "val", sr, styles, pieces=3)
        tuning["inversion"] = keep("inversion", lambda: inversion_round_trips(models, short))
        results["tuning"] = tuning
        if opts.real:
            results["real"] = keep("real", lambda: real_set(opts.real, real_files, models,
                                                            judge, val))
        if opts.speed:
            results["speed"] = keep("speed", lambda: speed.speed_table(opts.ckpt_dir,
                                                                       opts.device, main))
    results["wall_seconds"] = time.perf_counter() - t_start + keep.seconds
    results["kept_rows"] = keep.reused      # from earlier sittings of this run (--resume)
    return results


def evaluate_sweep(opts, command, pieces=2, seconds=4.0):
    """The LDM sweep on the first `seconds` of `pieces` val pieces (results/sweep.json)."""
    t_start = time.perf_counter()
    provenance, judge, styles, cfg = setup(opts, command)
    sr = cfg.audio.sample_rate
    val = load_split(opts.data, "val", sr, styles, opts.pieces or pieces, seconds)
    metrics.fad_basis_and_floor(val, load_split(opts.data, "train", sr, styles, len(val.pieces),
                                        seconds), judge)
    models = transfer_lib.load_models(opts.ckpt_dir, device=opts.device)
    return dict(provenance, sweep=sweep(models, val, judge),
                wall_seconds=time.perf_counter() - t_start)


def real_set(folders, files, models, judge, val, settings=None, name=None):
    """The real-recording table, and the classifier's accuracy on val renders through the
    recording chain (how far its judgement of recordings can be trusted). settings:
    transfer() settings (development; None: its defaults), named `name` in the table."""
    real = evaluate_real.score_real(models, judge, files, **(settings or {}))
    real["folders"], real["settings_name"] = list(folders), name
    real["render_content_kept"] = evaluate_real.render_content_kept(val, judge.sample_rate)
    real["classifier_augmented_val"] = evaluate_real.augmented_accuracy(judge, val)
    return real


def evaluate_real_only(opts, command):
    """Development: the real-set table alone (results/real.json and REAL.md)."""
    t_start = time.perf_counter()
    files = evaluate_real.find_files(opts.real, opts.real_files, opts.real_tune)
    provenance, judge, styles, cfg = setup(opts, command)
    val = load_split(opts.data, "val", cfg.audio.sample_rate, styles)
    teacher, settings = opts.transfer_settings()
    models = transfer_lib.load_models(opts.ckpt_dir, device=opts.device, teacher=teacher)
    name = opts.settings and f"`{transfer_row_name(models, teacher, **settings)}`"
    return dict(provenance, real=real_set(opts.real, files, models, judge, val, settings, name),
                wall_seconds=time.perf_counter() - t_start)


def split_summary(split, sample_rate):
    return dict(name=split.name, pieces=len(split.pieces), styles=split.styles,
                seconds=len(next(iter(split.waves.values()))) / sample_rate)
