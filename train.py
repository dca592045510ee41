"""Entry point for everything that is built or trained: one stage per `--stage`.

    python train.py --stage data --out data/builtin [--pieces N] [--seconds S] [--seed K]
    python train.py --stage classifier [--data data/builtin] [--steps N]
    python train.py --stage eval [--pieces N]      -> results/results.json, results/RESULTS.md

Stages land one issue at a time; `--help` lists the ones that exist.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import platform
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import autoencoder as ae_lib
import baselines
import config
import data
import diffusion
import evaluate
import guidediff
import unet
from stft import LogMel, griffin_lim, mrstft_distance


# ---------------------------------------------------------------- the shared training loop
def setup_distributed(device):
    """Under torchrun, join the process group (NCCL on CUDA, gloo on CPU); else run alone.

    Returns (rank, world_size, device): each CUDA process takes the GPU of its local rank.
    """
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device)
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def lr_at(step, lr, warmup, total):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def get_batch(dataset, n, batch_size, seed, rank=0, world=1):
    """The n-th (micro-)batch of a run: a pure function of its arguments.

    Epoch e visits the dataset in the order of a DistributedSampler seeded by (seed, e), each
    rank its own share; the random draws inside the dataset (clip offsets) are seeded by
    (seed, n, rank). So `--resume` continues exactly without saving any data state.
    """
    per_epoch = (len(dataset) // world) // batch_size
    assert per_epoch > 0, f"dataset of {len(dataset)} items is smaller than one batch"
    epoch, k = divmod(n, per_epoch)
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=seed,
                                                  drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)[k * batch_size:(k + 1) * batch_size]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(seed, n, rank, 1))
        return torch.utils.data.default_collate([dataset[i] for i in indices])


def _mix(*values):
    """A 63-bit seed from a tuple of integers (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence(list(values)).generate_state(2, np.uint64)[0] >> 1)


def accumulate_gradients(net, loss_fn, dataset, step, accum, batch_size, seed, rank, world,
                         device, autocast):
    """Forward and backward over the step's `accum` micro-batches; DDP all-reduces once."""
    torch.manual_seed(_mix(seed, step, rank, 2))        # the loss's own noise: exact on resume
    loss_sum = 0.0
    for micro in range(accum):
        batch = get_batch(dataset, step * accum + micro, batch_size, seed, rank, world)
        batch = [b.to(device) if torch.is_tensor(b) else b for b in batch]
        last = micro == accum - 1
        with (contextlib.nullcontext() if last or world == 1 else net.no_sync()), autocast:
            loss = loss_fn(net, batch, step) / accum
        loss.backward()
        loss_sum += loss.item()
    return loss_sum


def train_loop(model, loss_fn, dataset, c, args, stage, validate=None, extra=None,
               export=lambda m: m):
    """The loop every stage shares: AdamW, warm-up + cosine, clipping, EMA, bf16 autocast,
    gradient accumulation, DDP, JSON-lines log, validation, atomic checkpoints, --resume.

    model: nn.Module (on its device); loss_fn(model, batch, step) -> scalar, calling the
    model (DDP-wrapped when distributed) through its forward; c: the stage's config
    (steps, batch_size, lr, weight_decay, warmup, ema, grad_accum); validate(ema_model) ->
    dict; extra(ema) -> dict of things stored in the checkpoint beside the EMA weights;
    export(ema) -> the module whose weights go into CKPT_DIR/STAGE.pt. Returns the EMA model.
    """
    rank, world, device = setup_distributed(args.device)
    steps, accum, lr = args.steps or c.steps, c.grad_accum, getattr(args, "lr", None) or c.lr
    batch_size = (args.batch_size or c.batch_size) // (world * accum)
    assert batch_size > 0, "batch size must be at least world size x grad_accum"
    if getattr(args, "init", None):                 # fine-tune from a finished checkpoint
        _, new = config.load_weights(export(model), config.load_checkpoint(args.init, stage),
                                     stage, grow=True)
        if new and rank == 0:
            print(f"{stage}: {len(new)} tensors not in {args.init} start fresh: "
                  f"{', '.join(sorted({k.rsplit('.', 1)[0] for k in new}))}")
        model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = DDP(model) if world > 1 else model
    if getattr(args, "compile", False):             # inductor kernels for forward + backward
        net = torch.compile(net)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=c.weight_decay)
    ckpt_dir = Path(args.ckpt_dir)
    state_path, step = ckpt_dir / f"{stage}.train.pt", 0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    log_dir = Path(args.runs) / stage
    if rank == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(step, steps), desc=stage, initial=step, total=steps, disable=rank != 0)
    t0 = time.perf_counter()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, c.warmup, steps)
        loss_sum = accumulate_gradients(net, loss_fn, dataset, step, accum, batch_size,
                                        args.seed, rank, world, device, autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():                       # ema <- decay ema + (1 - decay) model
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - c.ema)
            for b_ema, b in zip(ema.buffers(), model.buffers()):
                b_ema.copy_(b)
        done = step + 1
        if rank != 0:
            continue
        record = dict(step=done, loss=loss_sum, grad_norm=grad_norm.item(), lr=group["lr"],
                      steps_per_s=(done - bar.initial) / (time.perf_counter() - t0))
        if validate and (done % args.val_every == 0 or done == steps):
            record.update(validate(ema))
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss",) or
                         k.startswith("val")})
        with open(log_dir / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if done % args.save_every == 0 or done == steps:
            config.save_checkpoint(state_path, model=model.state_dict(), ema=ema.state_dict(),
                                   opt=opt.state_dict(), step=done)
            # Inference weights in half precision: half the size, no audible difference.
            weights = {k: v.half() if v.is_floating_point() else v
                       for k, v in export(ema).state_dict().items()}
            config.save_checkpoint(ckpt_dir / f"{stage}.pt", model=weights, step=done,
                                   **(extra(ema) if extra else {}))
    if world > 1:
        dist.barrier()
    return ema


# ---------------------------------------------------------------- stages


def audio_splits(args, cfg, clip_seconds, val_seconds, rank):
    """The train split as random clips (a new crop of every file each epoch) and the val
    split as fixed consecutive clips, with the same style list."""
    train = data.AudioFolder(args.data, "train", cfg.audio.sample_rate, clip_seconds,
                             random_clips=True, progress=tqdm if rank == 0 else None)
    val = data.AudioFolder(args.data, "val", cfg.audio.sample_rate, val_seconds,
                           random_clips=False, styles=train.styles)
    return train, val


def stage_data(args, cfg):
    pieces = args.pieces or cfg.data.pieces
    seconds = args.seconds or cfg.data.seconds
    if pieces < 3:
        raise ValueError(f"--pieces {pieces} is too few: the split needs one piece each for "
                         f"train, val and test, so use 3 or more")
    if seconds < 1:
        raise ValueError(f"--seconds {seconds} is too short: use 1 or more")
    t0 = time.perf_counter()
    meta = data.build_dataset(args.out, pieces=pieces, seconds=seconds, seed=args.seed,
                              sample_rate=cfg.audio.sample_rate, workers=args.workers,
                              progress=lambda it, total: tqdm(it, total=total, desc="rendering",
                                                              unit="piece"))
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.wav"))
    n = {s: len(v) for s, v in meta["splits"].items()}
    print(f"wrote {pieces} pieces x {len(meta['styles'])} styles ({', '.join(meta['styles'])}) "
          f"to {args.out}: train/val/test pieces {n['train']}/{n['val']}/{n['test']}, "
          f"{size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s")


def stage_classifier(args, cfg):
    c = cfg.classifier
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, c.clip_seconds, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    torch.manual_seed(args.seed)
    model = evaluate.StyleClassifier(len(train.styles), c.channels, c.emb_dim).to(device)

    def loss_fn(model, batch, step):
        wave, label = batch
        gain_db = (torch.rand(len(wave), 1, device=device) * 2 - 1) * c.gain_db
        return F.cross_entropy(model(logmel(wave * 10 ** (gain_db / 20))), label)

    @torch.no_grad()
    def validate(model):
        loader = torch.utils.data.DataLoader(val, batch_size=64)
        correct = sum((model(logmel(w.to(device))).argmax(-1).cpu() == y).sum().item()
                      for w, y in loader)
        return {"val_accuracy": correct / len(val)}

    ema = train_loop(model, loss_fn, train, c, args, "classifier", validate,
                     extra=lambda ema: dict(config=config.config_to_dict(cfg), styles=train.styles))
    if rank == 0:
        print(f"classifier: {sum(p.numel() for p in ema.parameters())} parameters, validation "
              f"accuracy {100 * validate(ema)['val_accuracy']:.1f}% on {len(val)} clips")


class AutoencoderTraining(nn.Module):
    """One autoencoder training step as one forward, so that DDP sees every parameter."""

    def __init__(self, autoencoder, discriminator, c):
        super().__init__()
        self.autoencoder, self.discriminator, self.c = autoencoder, discriminator, c

    def forward(self, spec, adv_weight):
        loss, _ = ae_lib.autoencoder_loss(self.autoencoder, spec, self.c.kl_weight,
                                          self.c.spectral_weight, self.discriminator, adv_weight)
        return loss


def stage_autoencoder(args, cfg):
    c = cfg.autoencoder
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, 4.0, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    keep = range(0, len(val), max(1, len(val) // 64))          # 64 clips over all styles
    val_specs = torch.cat([logmel(val[i][0][None].to(device)) for i in keep])
    torch.manual_seed(args.seed)
    autoencoder = ae_lib.Autoencoder(1, c.channels, c.latent_channels, c.num_res_blocks)
    discriminator = ae_lib.PatchDiscriminator() if c.adv_weight > 0 else None
    model = AutoencoderTraining(autoencoder, discriminator, c).to(device)

    def loss_fn(net, batch, step):
        wave, _ = batch
        return net(logmel(wave), c.adv_weight if step >= c.disc_start else 0.0)

    @torch.no_grad()
    def validate(ema):
        recon = torch.cat([ema.autoencoder(s)[0] for s in val_specs.split(16)])
        return {"val_l1": (recon - val_specs).abs().mean().item()}

    def extra(ema):                           # unit-variance latents for the diffusion stage
        return dict(config=config.config_to_dict(cfg), styles=train.styles,
                    latent_scale=ae_lib.latent_scale(ema.autoencoder, val_specs.split(16)))

    ema = train_loop(model, loss_fn, train, c, args, "autoencoder", validate, extra,
                     export=lambda ema: ema.autoencoder)
    if rank == 0:
        n = sum(p.numel() for p in ema.autoencoder.parameters())
        z = ema.autoencoder.encode(val_specs[:1]).mode()
        print(f"autoencoder: {n} parameters, latent {tuple(z.shape[1:])} for "
              f"{tuple(val_specs.shape[1:])}, {validate(ema)}")


def autoencoder_systems(autoencoder, waves, logmel, cfg):
    """Resynthesis rows: the autoencoder's round trip, heard through Griffin-Lim."""
    generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def round_trip(wave, src, tgt, piece):
        spec = logmel(wave[None])
        recon = autoencoder.decode(autoencoder.encode(spec).mode(), length=spec.shape[-1])
        return griffin_lim(logmel.mel_to_magnitude(recon), cfg.audio.n_fft, cfg.audio.hop,
                           n_iter=64, length=len(wave), generator=generator)[0]

    return {"autoencoder round trip + Griffin-Lim 64 it.": round_trip}


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
        return F.pad(x[..., start:start + n], (0, max(0, -spare)), mode="replicate")

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


def stage_ldm(args, cfg):
    c = cfg.ldm
    rank, world, device = setup_distributed(args.device)
    autoencoder, ae_ckpt = load_autoencoder(args.ckpt_dir)
    cfg.audio, cfg.autoencoder = config.config_from_dict(ae_ckpt["config"]).audio, \
        config.config_from_dict(ae_ckpt["config"]).autoencoder
    autoencoder.to(device)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    train = data.AudioFolder(args.data, "train", cfg.audio.sample_rate, random_clips=False,
                             styles=ae_ckpt["styles"], progress=tqdm if rank == 0 else None)
    val = data.AudioFolder(args.data, "val", cfg.audio.sample_rate, random_clips=False,
                           styles=ae_ckpt["styles"])
    scale = ae_ckpt["latent_scale"]
    progress = tqdm if rank == 0 else None
    dataset = LatentClips(*encode_pieces(autoencoder, scale, logmel, train.waves, device,
                                         progress), train.labels, c.latent_frames, c.ref_frames)
    val_set = LatentClips(*encode_pieces(autoencoder, scale, logmel, val.waves, device),
                          val.labels, c.latent_frames, c.ref_frames)
    torch.manual_seed(args.seed)
    model = unet.build_ldm(c, len(train.styles), cfg.audio.n_mels).to(device)

    def loss_fn(net, batch, step):
        return net(*batch)

    @torch.no_grad()
    def validate(ema):                        # fixed noise and crops: comparable over time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            batch = torch.utils.data.default_collate([val_set[i] for i in range(0, len(val_set), 3)])
            return {"val_loss": ema(*(b.to(device) for b in batch)).item()}

    train_loop(model, loss_fn, dataset, c, args, "ldm", validate,
               extra=lambda ema: dict(config=config.config_to_dict(cfg), styles=train.styles,
                                      latent_scale=scale))
    if rank == 0:
        print(f"ldm: {sum(p.numel() for p in model.parameters())} parameters")


class GuideDiffTraining(nn.Module):
    """GuideDiff + the log-mel front end; forward returns the loss (one forward for DDP)."""

    def __init__(self, model, logmel, c):
        super().__init__()
        self.model, self.logmel, self.c = model, logmel, c

    def forward(self, wave):
        return guidediff.training_loss(self.model, wave, self.logmel(wave), self.logmel,
                                       self.c.p_pure_noise, self.c.mel_weight)


def score_vocoder(model, specs, waves, logmel, noise_levels, batch=8):
    """(log-mel L1, MR-STFT distance) of GuideDiff's output against the true waves;
    fixed noise, so that schedules and checkpoints compare fairly."""
    generator = torch.Generator().manual_seed(0)
    out = torch.cat([model.vocode(s, noise_levels=noise_levels, generator=generator,
                                  length=w.shape[-1])
                     for s, w in zip(specs.split(batch), waves.split(batch))])
    return ((logmel(out) - specs).abs().mean().item(),
            mrstft_distance(waves, out).mean().item())


def search_schedules(model, specs, waves, logmel, step_counts):
    """The few-step schedules: for each step count, the candidate noise levels with the
    lowest log-mel L1 + MR-STFT on the validation clips (stored in the checkpoint)."""
    found = {}
    for k in step_counts:
        scored = [(sum(score_vocoder(model, specs, waves, logmel, levels)), levels)
                  for levels in guidediff.candidate_schedules(k)]
        found[k] = min(scored)[1]
    return found


def stage_guidediff(args, cfg):
    c = cfg.guidediff
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, 2.0, rank)
    keep = range(0, len(val), max(1, len(val) // 32))          # 32 clips over all styles
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    val_waves = torch.stack([val[i][0] for i in keep]).to(device)
    val_specs = logmel(val_waves)
    torch.manual_seed(args.seed)
    model = GuideDiffTraining(guidediff.build(cfg), logmel, c).to(device)

    def loss_fn(net, batch, step):
        return net(batch[0])

    def validate(ema):
        levels = guidediff.candidate_schedules(c.default_steps)[0]
        l1, mr = score_vocoder(ema.model, val_specs, val_waves, logmel, levels)
        return {"val_logmel_l1": l1, "val_mrstft": mr}

    def extra(ema):
        return dict(config=config.config_to_dict(cfg), styles=train.styles)

    ema = train_loop(model, loss_fn, train, c, args, "guidediff", validate, extra,
                     export=lambda ema: ema.model)
    if rank == 0:                  # the few-step schedules, searched once on the val clips
        schedules = search_schedules(ema.model, val_specs, val_waves, logmel, c.search_steps)
        path = Path(args.ckpt_dir) / "guidediff.pt"
        ckpt = config.load_checkpoint(path, "guidediff")
        config.save_checkpoint(path, **ckpt, schedules=schedules, default_steps=c.default_steps)
        n = sum(p.numel() for p in ema.model.parameters())
        print(f"guidediff: {n} parameters; schedules {schedules}")


def load_ldm(ckpt_dir):
    ckpt = config.load_checkpoint(Path(ckpt_dir) / "ldm.pt", "ldm")
    return unet.from_checkpoint(ckpt), ckpt


def griffin_lim_vocoder(logmel, cfg):
    def vocode(spec, length, generator):
        return griffin_lim(logmel.mel_to_magnitude(spec), cfg.audio.n_fft, cfg.audio.hop,
                           n_iter=64, length=length, generator=generator)
    return vocode


def load_guidediff(ckpt_dir):
    return guidediff.from_checkpoint(config.load_checkpoint(Path(ckpt_dir) / "guidediff.pt",
                                                            "guidediff"))


def guidediff_vocoder(model, steps, projections=None):
    def vocode(spec, length, generator):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model.vocode(spec, steps, generator=generator, length=length,
                                projections=projections).float()
    return vocode


PROJECTION_ROWS = (0, 8, 16, 32)    # mel projection rounds scored at the default step count


def guidediff_systems(model, waves, logmel):
    """Resynthesis rows: GuideDiff from the ground-truth log-mel at each stored step count,
    and at the default count with other numbers of mel projections (none included)."""
    def system(steps, projections=None):
        vocode = guidediff_vocoder(model, steps, projections)

        def resynthesise(wave, src, tgt, piece):
            return vocode(logmel(wave[None]), len(wave), torch.Generator().manual_seed(0))[0]
        return resynthesise

    def name(k, p):
        return (f"GuideDiff, {k} step{'s' * (k > 1)}" +
                (f" + {p} mel projections" if p else ", no mel projection") +
                " (ground-truth log-mel)")
    rows = {name(k, model.projections): system(k) for k in sorted(model.schedules)}
    k = model.default_steps
    for p in sorted(set(PROJECTION_ROWS) - {model.projections}):
        rows[name(k, p)] = system(k, p)
    return rows


def ldm_systems(ldm, ldm_ckpt, autoencoder, styles, logmel, settings, vocoders):
    """Transfer rows: one per setting dict(mode, strength, guidance, steps) and vocoder --
    the latent transfer of diffusion.transfer, decoded by the autoencoder and heard
    through each of `vocoders` ({name: vocode(spec, length, generator)}).

    All targets of one (piece, source) are denoised in one batch, and the latent result is
    shared by the vocoders; each output reports its share of the timed compute (the
    batch's time over its targets, plus its own vocoding), so the RTF is the true cost."""
    scale = ldm_ckpt["latent_scale"]
    prediction = config.config_from_dict(ldm_ckpt["config"]).ldm.prediction

    @torch.no_grad()
    def latent_transfer(wave, src, mode, strength, guidance, steps, warm_start=False):
        t0 = time.perf_counter()
        spec = logmel(wave[None])                                       # (1, 1, n_mels, T)
        targets = [s for s in styles if s != src]
        z = (autoencoder.encode(spec).mode() * scale).expand(len(targets), -1, -1, -1)
        labels = torch.tensor([styles.index(s) for s in targets])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_tgt = diffusion.transfer(
                ldm.unet, ldm.sched, z, ldm.style.from_labels(labels), steps, strength, mode,
                context_src=ldm.style.from_labels(torch.full_like(labels, styles.index(src))),
                null_context=ldm.style.null_context(len(targets)), guidance=guidance,
                generator=torch.Generator().manual_seed(0), prediction=prediction,
                warm_start=warm_start)
        spec_tgt = autoencoder.decode(z_tgt.float() / scale, length=spec.shape[-1])
        return targets, spec_tgt, time.perf_counter() - t0

    latents, systems = {}, {}
    for setting in settings:
        key = tuple(setting.values())
        for vocoder_name, vocode in vocoders.items():
            cache = {}

            def transfer(wave, src, tgt, piece, setting=setting, key=key, vocode=vocode,
                         cache=cache):
                if (key, piece, src) not in latents:
                    latents[key, piece, src] = latent_transfer(wave, src, **setting)
                if (piece, src) not in cache:
                    targets, spec_tgt, seconds = latents[key, piece, src]
                    t0 = time.perf_counter()
                    audio = vocode(spec_tgt, len(wave), torch.Generator().manual_seed(0))
                    share = (seconds + time.perf_counter() - t0) / len(targets)
                    cache[piece, src] = {t: (a, share) for t, a in zip(targets, audio)}
                return cache[piece, src][tgt]

            warm = {"previous": ", warm-started", "extrapolate": ", extrapolated warm start"
                    }.get(setting.get("warm_start"), "")
            name = (f"LDM {setting['mode']} (strength {setting['strength']}, "
                    f"w={setting['guidance']}, {setting['steps']} steps{warm}) + {vocoder_name}")
            systems[name] = transfer
    return systems


SWEEP = dict(mode=("sdedit", "inversion"), strength=(0.3, 0.5, 0.7, 0.9), guidance=(1.0, 3.0, 5.0))


def sweep_ldm(args, waves, styles, classifier, logmel, cfg):
    """The strength x guidance grid for both modes on the first 4 s of --pieces test pieces
    (default 2), heard through Griffin-Lim: rows of results["sweep"]."""
    ldm, ldm_ckpt = load_ldm(args.ckpt_dir)
    autoencoder = load_autoencoder(args.ckpt_dir)[0]
    window = int(4.0 * cfg.audio.sample_rate)
    waves = {k: w[:window] for k, w in waves.items()}
    settings = [dict(mode=m, strength=s, guidance=g, steps=args.sampler_steps)
                for m in SWEEP["mode"] for s in SWEEP["strength"] for g in SWEEP["guidance"]]
    systems = ldm_systems(ldm, ldm_ckpt, autoencoder, styles, logmel, settings,
                          {"Griffin-Lim": griffin_lim_vocoder(logmel, cfg)})
    rows = []
    for setting, (name, system) in zip(settings, tqdm(systems.items(), desc="sweep")):
        rows.append(dict(setting, **evaluate.score_system(system, waves, styles, classifier,
                                                          logmel, cfg.audio.sample_rate)))
    identity = evaluate.score_system(lambda wave, src, tgt, piece: wave, waves, styles,
                                     classifier, logmel, cfg.audio.sample_rate)
    return dict(rows=rows, identity=identity, pieces=len({p for p, _ in waves}), seconds=4.0)


@torch.no_grad()
def inversion_round_trip(args, waves, styles, logmel, sample_rate, strength=0.9):
    """How exact each first guess of diffusion.ddim_invert is on the trained model: invert
    the first 4 s of every test clip under its own style (one refinement a step, as
    transfer.py does), regenerate under the same style, and measure the latent's relative
    error and the U-Net calls (results["inversion"])."""
    ldm, ldm_ckpt = load_ldm(args.ckpt_dir)
    autoencoder = load_autoencoder(args.ckpt_dir)[0]
    keys = sorted(waves)
    spec = torch.cat([logmel(waves[k][None, :int(4.0 * sample_rate)]) for k in keys])
    z = autoencoder.encode(spec).mode() * ldm_ckpt["latent_scale"]
    context = ldm.style.from_labels(torch.tensor([styles.index(s) for _, s in keys]))
    t_end, prediction = int(round(strength * (ldm.sched.T - 1))), ldm.c.prediction
    calls, rows = [], {}

    def unet(*a):
        calls.append(1)
        return ldm.unet(*a)
    for warm_start in tqdm(diffusion.WARM_STARTS, desc="inversion round trips"):
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            x_t = diffusion.ddim_invert(unet, ldm.sched, z, context, args.sampler_steps, t_end,
                                        prediction=prediction, fixed_point_iters=1,
                                        warm_start=warm_start)
            n_calls = len(calls)
            back = diffusion.ddim_sample(ldm.unet, ldm.sched, x_t.float(), context,
                                         args.sampler_steps, t_start=t_end,
                                         prediction=prediction).float()
        rows[warm_start] = dict(calls=n_calls, error=((back - z).norm() / z.norm()).item())
    return dict(rows=rows, latents=len(keys), steps=args.sampler_steps, strength=strength)


def load_autoencoder(ckpt_dir):
    ckpt = config.load_checkpoint(Path(ckpt_dir) / "autoencoder.pt", "autoencoder")
    return ae_lib.from_checkpoint(ckpt), ckpt


def load_classifier(ckpt_dir):
    ckpt = config.load_checkpoint(Path(ckpt_dir) / "classifier.pt", "classifier")
    return evaluate.classifier_from_checkpoint(ckpt), ckpt["styles"], \
        config.config_from_dict(ckpt["config"])


def machine_description():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads; matmul {evaluate.matmul_gflops():.0f} GFLOP/s fp32, "
            f"{evaluate.matmul_gflops(dtype=torch.bfloat16):.0f} GFLOP/s bf16")


def best_settings(sweep, mode):
    """The sweep's pick for a mode: the highest style accuracy among settings whose chroma
    similarity to the target stays within 0.1 of the identity's (issue 6's content bar);
    if none does, the best content."""
    rows = [r for r in sweep["rows"] if r["mode"] == mode]
    ok = [r for r in rows if r["content_target"] >= sweep["identity"]["content_target"] - 0.1]
    best = max(ok, key=lambda r: (r["style_accuracy"], r["content_target"])) if ok else \
        max(rows, key=lambda r: r["content_target"])
    return {k: best[k] for k in ("mode", "strength", "guidance", "steps")}


def stage_eval(args, cfg):
    classifier, styles, cfg = load_classifier(args.ckpt_dir)
    default_pieces = 2 if args.sweep else 3 if args.inversion else None     # None: all
    waves, test_styles = data.load_paired_split(args.data, "test", cfg.audio.sample_rate,
                                                pieces=args.pieces or default_pieces)
    if test_styles != styles:
        raise ValueError(f"the classifier knows styles {styles} but {args.data} has "
                         f"{test_styles}; retrain it with `python train.py --stage classifier`")
    logmel = LogMel(**asdict(cfg.audio))
    out_dir = Path(args.results)
    results_path = out_dir / "results.json"
    old = json.loads(results_path.read_text()) if results_path.is_file() else {}
    command = "python " + " ".join(sys.argv)
    if args.speed:                          # only the speed table is redone
        old["speed"] = dict(speed_table(args, cfg, waves, styles), command=command)
        write_results(old, out_dir)
        print(evaluate.speed_markdown(old))
        return
    if args.inversion:                      # only the inversion round trips are redone
        old["inversion"] = dict(inversion_round_trip(args, waves, styles, logmel,
                                                     cfg.audio.sample_rate),
                                command=command, machine=machine_description())
        write_results(old, out_dir)
        print(evaluate.inversion_markdown(old))
        return
    if args.sweep:                          # only the sweep is redone; the tables stay
        old["sweep"] = dict(sweep_ldm(args, waves, styles, classifier, logmel, cfg),
                            command=command)
        write_results(old, out_dir)
        print(evaluate.sweep_markdown(old))
        return
    # --rows rescores some rows and keeps the rest; a full run starts the tables afresh.
    keep = ("sweep", "inversion") + (("transfer", "resynthesis", "fad_floor", "speed")
                                     if args.rows else ())
    results = {k: old[k] for k in keep if k in old}
    transfer, resynthesis = evaluate.reference_systems(waves, logmel, cfg.audio.n_fft,
                                                       cfg.audio.hop)
    references = set(transfer)
    base_transfer, base_resynthesis = baseline_systems(args, cfg, logmel, styles, waves)
    transfer.update(base_transfer)
    resynthesis.update(base_resynthesis)
    if (Path(args.ckpt_dir) / "autoencoder.pt").is_file():
        resynthesis.update(autoencoder_systems(load_autoencoder(args.ckpt_dir)[0], waves, logmel,
                                               cfg))
    vocoders = {"Griffin-Lim": griffin_lim_vocoder(logmel, cfg)}
    if (Path(args.ckpt_dir) / "guidediff.pt").is_file():
        gd = load_guidediff(args.ckpt_dir)
        resynthesis.update(guidediff_systems(gd, waves, logmel))
        vocoders[f"GuideDiff {gd.default_steps} steps + {gd.projections} mel projections"] = \
            guidediff_vocoder(gd, gd.default_steps)
    if (Path(args.ckpt_dir) / "ldm.pt").is_file():
        ldm, ldm_ckpt = load_ldm(args.ckpt_dir)
        settings = [best_settings(results["sweep"], m) if "sweep" in results else
                    dict(mode=m, strength=0.7, guidance=3.0, steps=args.sampler_steps)
                    for m in SWEEP["mode"]]
        settings.append(dict(settings[-1], warm_start="previous"))
        settings.append(dict(settings[-2], warm_start="extrapolate"))
        transfer.update(ldm_systems(ldm, ldm_ckpt, load_autoencoder(args.ckpt_dir)[0], styles,
                                    logmel, settings, vocoders))
    if args.rows:
        chosen = set(base_transfer) | set(base_resynthesis) if args.rows == "baselines" else \
            {n for n in list(transfer) + list(resynthesis) if re.search(args.rows, n)}
        if not chosen:
            raise ValueError(f"--rows {args.rows!r} matches no row; rows: "
                             f"{', '.join(list(transfer) + list(resynthesis))}")
        transfer = {k: v for k, v in transfer.items() if k in chosen}
        resynthesis = {k: v for k, v in resynthesis.items() if k in chosen}
    for table, systems, resynth in (("transfer", transfer, False),
                                    ("resynthesis", resynthesis, True)):
        rows = results.setdefault(table, {})
        for name, system in tqdm(systems.items(), desc=f"scoring {table}"):
            rows[name] = evaluate.score_system(system, waves, styles, classifier, logmel,
                                               cfg.audio.sample_rate, resynthesis=resynth)
            if name in references:          # returning stored audio costs nothing
                rows[name].pop("rtf")
    pieces = sorted({p for p, _ in waves})
    if "fad_floor" not in results:
        train_waves = data.load_paired_split(args.data, "train", cfg.audio.sample_rate,
                                             pieces=len(pieces))[0]
        results["fad_floor"] = evaluate.fad_floor(waves, train_waves, styles, classifier,
                                                  logmel, cfg.audio.sample_rate)
    results["test_set"] = dict(pieces=len(pieces), styles=styles,
                               seconds=len(next(iter(waves.values()))) / cfg.audio.sample_rate)
    if args.rows and results_path.is_file():
        # Only this run's rows go into the file as it is now (another --rows run may have
        # written since this one started); the tables' command stays, this one is added.
        new, results = results, json.loads(results_path.read_text())
        for table, systems in (("transfer", transfer), ("resynthesis", resynthesis)):
            results.setdefault(table, {}).update({k: new[table][k] for k in systems})
        for key in ("fad_floor", "test_set"):
            results.setdefault(key, new[key])
        results.setdefault("command", command)
        results.setdefault("machine", machine_description())
        results["reruns"] = [r for r in results.get("reruns", []) if r["command"] != command] \
            + [dict(command=command, machine=machine_description(),
                    rows=sorted(transfer) + sorted(resynthesis))]
    else:
        results.update(command=command, machine=machine_description())
    write_results(results, out_dir)
    print(evaluate.results_markdown(results))


SPEED_SECONDS = 10.0        # the clip the speed table times (a test piece's first 10 s)
SPEED_REPEATS = 3


def speed_table(args, cfg, waves, styles):
    """Real-time factor of transfer.transfer, per stage and end to end, on SPEED_SECONDS of
    a test piece at the default settings: eager vs torch.compile, fp32 vs bf16 autocast,
    each the median of SPEED_REPEATS runs after a first (warm-up, compiling) run. The FLOPs
    of each stage (matmuls, convolutions, attention) are counted once; achieved FLOP/s is
    set against this machine's matmul throughput, measured in the same run.

    transfer.py is an entry point, imported here only for its public transfer() function:
    the table times exactly what a user runs."""
    import transfer as transfer_lib
    piece = sorted({p for p, _ in waves})[0]
    source, target = styles[0], styles[-1]
    sr = cfg.audio.sample_rate
    wave = waves[piece, source][:int(SPEED_SECONDS * sr)].numpy()

    def run(models, stopwatch=transfer_lib.no_stopwatch):
        transfer_lib.transfer(wave, sr, target, models=models, progress=False,
                              stopwatch=stopwatch)

    models = transfer_lib.load_models(args.ckpt_dir, device=args.device, bf16=False)
    with evaluate.flop_counter() as counter:
        watch = transfer_lib.Stopwatch(args.device, counter)
        run(models, watch)
    flops = dict(watch.flops, **{"end to end": counter.get_total_flops()})
    ceiling = {"fp32": evaluate.matmul_gflops(device=args.device),
               "bf16": evaluate.matmul_gflops(dtype=torch.bfloat16, device=args.device)}
    rows = {}
    for compiled in (False, True):
        for precision in ("fp32", "bf16"):
            name = f"{'compiled' if compiled else 'eager'}, {precision}"
            models = transfer_lib.load_models(args.ckpt_dir, device=args.device,
                                              compile=compiled, bf16=precision == "bf16")
            t0 = time.perf_counter()
            run(models)
            first = time.perf_counter() - t0
            times = []
            for _ in tqdm(range(SPEED_REPEATS), desc=f"speed: {name}", leave=False):
                watch = transfer_lib.Stopwatch(args.device)
                t0 = time.perf_counter()
                run(models, watch)
                times.append(dict(watch.seconds, **{"end to end": time.perf_counter() - t0}))
            rtf = {k: float(np.median([t[k] for t in times])) / SPEED_SECONDS for k in times[0]}
            rows[name] = dict(rtf=rtf, first_call=first, gflops=flops["end to end"] / 1e9 / (
                rtf["end to end"] * SPEED_SECONDS), ceiling=ceiling[precision])
            print(f"{name}: end-to-end RTF {rtf['end to end']:.3f}, first call {first:.1f} s")
    return dict(seconds=SPEED_SECONDS, source=source, target=target,
                flops={k: v / 1e9 for k, v in flops.items()}, rows=rows, ceiling=ceiling,
                machine=machine_description(), device=args.device)


def write_results(results, out_dir):
    """results.json and RESULTS.md, each written to a temporary file and renamed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("results.json", json.dumps(results, indent=1)),
                       ("RESULTS.md", evaluate.results_markdown(results))):
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)


def stage_baselines(args, cfg):
    """Train the paper's baselines (baselines/), or just --baseline NAME."""
    kit = argparse.Namespace(train_loop=train_loop, audio_splits=audio_splits,
                             setup_distributed=setup_distributed)
    for name in [args.baseline] if args.baseline else baselines.NAMES:
        baselines.module(name).train(args, cfg, kit)


def baseline_systems(args, cfg, logmel, styles, waves):
    """({row: system} for transfer, {row: system} for resynthesis) of the trained baselines;
    waves: the test clips the rows will be asked for (autoregressive ones batch them)."""
    transfer, resynthesis = {}, {}
    for name in baselines.NAMES:
        m = baselines.module(name)
        (transfer if m.KIND == "transfer" else resynthesis).update(
            m.systems(args.ckpt_dir, cfg, logmel, styles, waves))
    return transfer, resynthesis


STAGES = {"baselines": stage_baselines, "data": stage_data, "classifier": stage_classifier, "autoencoder": stage_autoencoder,
          "ldm": stage_ldm, "guidediff": stage_guidediff, "eval": stage_eval}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--preset", default="tiny", choices=sorted(config.PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default="data/builtin", help="dataset root (built-in or DIR/<style>/)")
    p.add_argument("--ckpt-dir", default="checkpoints", help="where checkpoints are read/written")
    p.add_argument("--runs", default="runs", help="training logs (JSON lines)")
    p.add_argument("--results", default="results", help="where eval writes its tables")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    p.add_argument("--batch-size", type=int, default=None, help="default: preset")
    p.add_argument("--pieces", type=int, default=None,
                   help="data: pieces to build (default: preset); eval: test pieces to score")
    p.add_argument("--sweep", action="store_true",
                   help="eval: the LDM strength x guidance sweep (default 2 pieces, 4 s)")
    p.add_argument("--sampler-steps", type=int, default=10, help="eval: LDM denoising steps")
    p.add_argument("--inversion", action="store_true",
                   help="eval: only the DDIM inversion round trips (default 3 pieces, 4 s)")
    p.add_argument("--speed", action="store_true",
                   help="eval: only the speed table (eager/compiled x fp32/bf16, per stage)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model being trained")
    p.add_argument("--rows", default=None, metavar="REGEX",
                   help="eval: score only the rows whose name matches (e.g. 'WaveNet|CycleGAN'"
                        " or 'baselines' for all of them); the other rows of results.json stay")
    p.add_argument("--baseline", default=None, choices=baselines.NAMES,
                   help="baselines: train only this one")
    p.add_argument("--resume", action="store_true", help="continue from CKPT_DIR/STAGE.train.pt")
    p.add_argument("--init", default=None, metavar="CKPT",
                   help="start from the weights of a finished STAGE.pt (fine-tuning; a fresh "
                        "optimiser and schedule)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU and CUDA)")
    p.add_argument("--val-every", type=int, default=200, help="validation interval (steps)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint interval (steps)")
    g = p.add_argument_group("data stage")
    g.add_argument("--out", default="data/builtin", help="where the built-in dataset is written")
    g.add_argument("--seconds", type=float, default=None, help="length of each piece")
    g.add_argument("--workers", type=int, default=2, help="rendering processes")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = config.preset(args.preset)
    try:
        STAGES[args.stage](args, cfg)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
