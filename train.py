"""Entry point for everything that is built or trained: one stage per `--stage`.

    python train.py --stage data                 -> data/builtin (the paired dataset)
    python train.py --stage classifier | autoencoder | ldm | guidediff | baselines
                                                 -> checkpoints/STAGE.pt
    python train.py --stage distill              -> checkpoints/distill.pt (few-step student)
    python train.py --stage eval                 -> results/results.json, RESULTS.md

Every trained stage runs the same loop (train_loop: AdamW, warm-up + cosine, EMA with
warm-up, bf16 autocast, gradient accumulation, DDP under torchrun, atomic checkpoints,
--resume). The evaluation itself lives in evaluate.py; `--help` lists every flag.
"""
import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import augment
import autoencoder as ae_lib
import baselines
import config
import data
import distill
import evaluate
import metrics
import report
import guidediff
import unet
from stft import LogMel


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


def ema_decay(step, decay):
    """The EMA decay at a step, warmed up as min(decay, (1 + step) / (10 + step)): early
    averages forget the random initialisation (a fixed 0.999 from step 0 would still hold
    0.999 ** 1800 = 16% of it after 1800 steps)."""
    return min(decay, (1 + step) / (10 + step))


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


@dataclass
class LoopOptions:
    """The run's settings that the loop reads (the stage's config holds the model's)."""
    device: str = "cpu"
    steps: int = None           # None: the stage config's
    batch_size: int = None      # None: the stage config's (over all ranks)
    lr: float = None            # None: the stage config's peak rate
    seed: int = 0
    bf16: bool = False          # bfloat16 autocast
    compile: bool = False       # torch.compile the training forward and backward
    resume: bool = False        # continue from CKPT_DIR/STAGE.train.pt
    init: str = None            # start from a finished checkpoint's weights (fine-tuning)
    ckpt_dir: str = "checkpoints"
    runs: str = "runs"          # JSON-lines logs
    val_every: int = 200
    save_every: int = 200

    @classmethod
    def from_args(cls, args):
        """From train.py's parsed arguments (fields a namespace lacks keep their defaults)."""
        return cls(**{f.name: getattr(args, f.name, f.default) for f in fields(cls)})


def train_loop(model, loss_fn, dataset, c, opts, stage, validate=None, extra=None,
               export=lambda m: m):
    """The loop every stage shares: AdamW, warm-up + cosine, clipping, EMA, bf16 autocast,
    gradient accumulation, DDP, JSON-lines log, validation, atomic checkpoints, --resume.

    model: nn.Module (on its device); loss_fn(model, batch, step) -> scalar, calling the
    model (DDP-wrapped when distributed) through its forward; c: the stage's config
    (steps, batch_size, lr, weight_decay, warmup, ema, grad_accum); opts: LoopOptions;
    validate(ema_model) ->
    dict; extra(ema) -> dict of things stored in the checkpoint beside the EMA weights;
    export(ema) -> the module whose weights go into CKPT_DIR/STAGE.pt. Returns the EMA model.
    """
    rank, world, device = setup_distributed(opts.device)
    steps, accum, lr = opts.steps or c.steps, c.grad_accum, opts.lr or c.lr
    batch_size = (opts.batch_size or c.batch_size) // (world * accum)
    assert batch_size > 0, "batch size must be at least world size x grad_accum"
    if opts.init:                 # fine-tune from a finished checkpoint
        _, new = config.load_weights(export(model), config.load_checkpoint(opts.init, stage),
                                     stage, grow=True)
        if new and rank == 0:
            print(f"{stage}: {len(new)} tensors not in {opts.init} start fresh: "
                  f"{', '.join(sorted({k.rsplit('.', 1)[0] for k in new}))}")
        model.train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    net = DDP(model) if world > 1 else model
    if opts.compile:             # inductor kernels for forward + backward
        net = torch.compile(net)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=c.weight_decay)
    ckpt_dir = Path(opts.ckpt_dir)
    state_path, step = ckpt_dir / f"{stage}.train.pt", 0
    if opts.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.bf16)
    if opts.bf16 and rank == 0 and not metrics.bf16_pays(device):     # emulated bf16
        print("warning: bf16 is slower than fp32 here; drop --bf16", file=sys.stderr)
    log_dir = Path(opts.runs) / stage
    if rank == 0:
        log_dir.mkdir(parents=True, exist_ok=True)
    bar = tqdm(range(step, steps), desc=stage, initial=step, total=steps, disable=rank != 0)
    t0 = time.perf_counter()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, c.warmup, steps)
        loss_sum = accumulate_gradients(net, loss_fn, dataset, step, accum, batch_size,
                                        opts.seed, rank, world, device, autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():                       # ema <- decay ema + (1 - decay) model
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()),
                                 1 - ema_decay(step, c.ema))
            for b_ema, b in zip(ema.buffers(), model.buffers()):
                b_ema.copy_(b)
        done = step + 1
        if rank != 0:
            continue
        record = dict(step=done, loss=loss_sum, grad_norm=grad_norm.item(), lr=group["lr"],
                      steps_per_s=(done - bar.initial) / (time.perf_counter() - t0))
        if validate and (done % opts.val_every == 0 or done == steps):
            record.update(validate(ema))
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("loss",) or
                         k.startswith("val")})
        with open(log_dir / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")
        if done % opts.save_every == 0 or done == steps:
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
    t0 = time.perf_counter()
    meta = data.build_dataset(args.out, args.pieces or cfg.data.pieces,
                              args.seconds or cfg.data.seconds, args.seed, cfg.audio.sample_rate,
                              args.workers, progress=lambda it, total: tqdm(
                                  it, total=total, desc="rendering", unit="piece"))
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.wav"))
    n = "/".join(str(len(meta["splits"][s])) for s in ("train", "val", "test"))
    print(f"wrote {len(meta['pieces'])} pieces x {len(meta['styles'])} styles "
          f"({', '.join(meta['styles'])}) to {args.out}: train/val/test pieces {n}, "
          f"{size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s")


def stage_classifier(args, cfg):
    c = cfg.classifier
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, c.clip_seconds, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    torch.manual_seed(args.seed)
    model = metrics.StyleClassifier(len(train.styles), c.channels, c.emb_dim).to(device)

    chain = augment.Chain(cfg.audio.sample_rate, p=c.augment, gain_db=c.gain_db)

    def loss_fn(model, batch, step):
        wave, label = batch
        return F.cross_entropy(model(logmel(chain(wave))), label)

    @torch.no_grad()
    def validate(model):                    # clean renders, and the same through a fixed chain
        loader = torch.utils.data.DataLoader(val, batch_size=64)
        generator, clean, recorded = torch.Generator().manual_seed(0), 0, 0
        for w, y in loader:
            clean += (model(logmel(w.to(device))).argmax(-1).cpu() == y).sum().item()
            w = augment.Chain(cfg.audio.sample_rate)(w, generator).to(device)
            recorded += (model(logmel(w)).argmax(-1).cpu() == y).sum().item()
        return {"val_accuracy": clean / len(val), "val_accuracy_augmented": recorded / len(val)}

    ema = train_loop(model, loss_fn, train, c, LoopOptions.from_args(args), "classifier",
                     validate, extra=lambda ema: dict(config=config.config_to_dict(cfg),
                                                      styles=train.styles))
    if rank == 0:
        acc = validate(ema)
        print(f"classifier: {sum(p.numel() for p in ema.parameters())} parameters, validation "
              f"accuracy {100 * acc['val_accuracy']:.1f}% on {len(val)} clips, "
              f"{100 * acc['val_accuracy_augmented']:.1f}% through the recording chain")


def encoder_bytes(ckpt):
    """The bytes of an autoencoder.pt's encoder weights: what its latents depend on."""
    return b"".join(v.numpy().tobytes() for k, v in sorted(ckpt["model"].items())
                    if k.startswith("encoder."))


def stage_autoencoder(args, cfg):
    c = cfg.autoencoder
    if args.transfer_latents is not None:
        if not args.decoder_only:
            raise ValueError("--transfer-latents goes with --decoder-only --init CKPT")
        if not 0 <= args.transfer_latents < 1:
            raise ValueError(f"--transfer-latents {args.transfer_latents}: give a share in [0, 1)")
        c.transfer_latents = args.transfer_latents
    if args.fix_decoder_norms and not args.decoder_only:
        raise ValueError("--fix-decoder-norms goes with --decoder-only --init CKPT")
    if args.decoder_only:     # the latent space stays, and so do ldm.pt and distill.pt
        if not args.init:
            raise ValueError("--decoder-only fine-tunes a trained decoder: add --init "
                             "checkpoints/autoencoder.pt")
        init = config.load_checkpoint(args.init, "autoencoder")
        kept_scale, encoder = init["latent_scale"], encoder_bytes(init)
        init_norm = config.config_from_dict(init["config"]).autoencoder.decoder_norm
        c.decoder_norm = "fixed" if args.fix_decoder_norms else init_norm
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, 4.0, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    keep = range(0, len(val), max(1, len(val) // 64))          # 64 clips over all styles
    val_specs = torch.cat([logmel(val[i][0][None].to(device)) for i in keep])
    torch.manual_seed(args.seed)
    autoencoder = ae_lib.Autoencoder(1, c.channels, c.latent_channels, c.num_res_blocks,
                                     c.decoder_norm)
    discriminator = ae_lib.PatchDiscriminator() if c.adv_weight > 0 else None
    model = ae_lib.AutoencoderTraining(autoencoder, discriminator, c).to(device)
    opts = LoopOptions.from_args(args)
    if args.decoder_only:
        autoencoder.encoder.requires_grad_(False)
        if c.decoder_norm != init_norm:
            group = ae_lib.from_checkpoint(init).to(device)      # its GroupNorms folded with
            z = torch.cat([group.encode(s).mode() for s in val_specs.split(16)])  # val stats
            autoencoder.load_state_dict(ae_lib.fold_decoder_norms(group, z).state_dict())
            opts.init = None                  # loaded: the loop starts from these weights
    latents, val_latents = {}, {}
    if args.decoder_only and c.transfer_latents > 0:     # what the decoder meets in use
        here = Path(args.ckpt_dir) / "autoencoder.pt"    # (the transfers encode with it)
        if here.is_file() and encoder_bytes(config.load_checkpoint(here, "autoencoder")) \
                != encoder:
            raise ValueError(f"{here} has another encoder than the --init checkpoint: give "
                             f"--ckpt-dir a folder without an autoencoder.pt, or the same file")
        if rank == 0 and not here.is_file():
            config.save_checkpoint(here, **init)
        if dist.is_initialized():
            dist.barrier()
        files = ("ldm.pt", "distill.pt")      # and the encoder: not the decoder trained here
        latents = cached_transfers(args, train, rank, device, "latents", files, per_piece=2,
                                   key=encoder, chain=augment.Chain(cfg.audio.sample_rate,
                                                                    p=c.transfer_chain))
        val_latents = cached_transfers(args, val, rank, device, "latents", files, split="val",
                                       key=encoder)
        val_targets = {i: logmel(val.waves[i][None].to(device)) for i in val_latents}
    if latents:
        train = data.DecodedClips(train, latents, autoencoder.factor, cfg.audio.hop,
                                  c.transfer_latent_frames)
    chain = augment.Chain(cfg.audio.sample_rate, p=c.augment)

    def loss_fn(net, batch, step):
        adv = c.adv_weight if step >= c.disc_start else 0.0
        if not latents:
            return net(logmel(chain(batch[0])), adv)
        wave, _, z, target = batch
        k = round(len(wave) * (1 - c.transfer_latents))
        return net(logmel(chain(wave[:k])), adv, z[k:], logmel(target[k:]), c.transfer_latents)

    @torch.no_grad()
    def validate(ema):
        recon = torch.cat([ema.autoencoder(s)[0] for s in val_specs.split(16)])
        out = {"val_l1": (recon - val_specs).abs().mean().item()}
        if val_latents:           # transfers' latents decoded, against the target's render
            l1 = []
            for i, z in val_latents.items():
                target = val_targets[i]
                decoded = ema.autoencoder.decode(z[None].to(device))[..., :target.shape[-1]]
                l1.append((decoded - target[..., :decoded.shape[-1]]).abs().mean().item())
            out["val_transfer_l1"] = float(np.mean(l1))
        return out

    def extra(ema):                           # unit-variance latents for the diffusion stage
        scale = (kept_scale if args.decoder_only else
                 ae_lib.latent_scale(ema.autoencoder, val_specs.split(16)))
        return dict(config=config.config_to_dict(cfg), styles=train.styles, latent_scale=scale)

    ema = train_loop(model, loss_fn, train, c, opts, "autoencoder",
                     validate, extra, export=lambda ema: ema.autoencoder)
    if rank == 0:
        n = sum(p.numel() for p in ema.autoencoder.parameters())
        z = ema.autoencoder.encode(val_specs[:1]).mode()
        print(f"autoencoder: {n} parameters, latent {tuple(z.shape[1:])} for "
              f"{tuple(val_specs.shape[1:])}, {validate(ema)}")


def latent_datasets(args, cfg, rank, device, c):
    """(train, val, latent scale, styles): data.latent_clips for the config c, encoded by
    CKPT_DIR/autoencoder.pt, whose audio and autoencoder sections are copied into cfg."""
    ae_ckpt = config.load_checkpoint(Path(args.ckpt_dir) / "autoencoder.pt", "autoencoder")
    autoencoder, scale = ae_lib.from_checkpoint(ae_ckpt).to(device), ae_ckpt["latent_scale"]
    ae_cfg = config.config_from_dict(ae_ckpt["config"])
    cfg.audio, cfg.autoencoder = ae_cfg.audio, ae_cfg.autoencoder
    logmel, progress = LogMel(**asdict(cfg.audio)).to(device), tqdm if rank == 0 else None
    folders = [data.AudioFolder(args.data, split, cfg.audio.sample_rate, random_clips=False,
                                styles=ae_ckpt["styles"]) for split in ("train", "val")]
    chain = augment.Chain(cfg.audio.sample_rate)
    tag = hashlib.sha256((Path(args.ckpt_dir) / "autoencoder.pt").read_bytes()).hexdigest()[:12]

    def clips(folder, seed):        # whole pieces' latents, cached in DATA/cache
        return data.latent_clips(folder, autoencoder, scale, logmel, device, c, chain, seed,
                                 Path(args.data) / "cache", tag, args.bf16, progress)
    return clips(folders[0], 1), clips(folders[1], 1000), scale, folders[0].styles


def stage_ldm(args, cfg):
    c = cfg.ldm
    rank, world, device = setup_distributed(args.device)
    # Pairs exist only in the built-in data; a user's folders train the unpaired model.
    c.paired = c.paired and (Path(args.data) / "metadata.json").is_file()
    dataset, val_set, scale, styles = latent_datasets(args, cfg, rank, device, c)
    torch.manual_seed(args.seed)
    model = unet.build_ldm(c, len(styles), cfg.audio.n_mels).to(device)
    opts = LoopOptions.from_args(args)
    if opts.init:                   # an unpaired checkpoint grows its source channels
        new = unet.load_widened(model, config.load_checkpoint(opts.init, "ldm"))
        model.train()
        opts.init = None
        if rank == 0 and new:
            print(f"ldm: {len(new)} tensors not in {args.init} start fresh")

    @torch.no_grad()
    def validate(ema):                        # fixed noise and crops: comparable over time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            batch = torch.utils.data.default_collate([val_set[i]
                                                      for i in range(0, len(val_set), 3)])
            return {"val_loss": ema(*(b.to(device) for b in batch)).item()}

    train_loop(model, lambda net, batch, step: net(*batch), dataset, c, opts, "ldm", validate,
               extra=lambda ema: dict(config=config.config_to_dict(cfg), styles=styles,
                                      latent_scale=scale))
    if rank == 0:
        print(f"ldm: {sum(p.numel() for p in model.parameters())} parameters")


def cached_transfers(args, train, rank, device, kind, files, per_piece=1, split="train",
                     key=b"", chain=None):
    """{train file index: output} of the default transfer (transfer.py) into the style of
    that built-in file from another style of the same piece (data.cross_style_pairs):
    kind "guides", the log-mel before the vocoder (frame-aligned with that render, what
    GuideDiff meets in use), or "latents", the latent before the decoder. Cached in
    DATA/cache by the hash of what the outputs depend on: key (bytes) and CKPT_DIR's files
    of those names; {} (with a note) without CKPT_DIR/ldm.pt or the built-in data's pairs.
    chain: an augment.Chain to send each source through first (seeded: a recording of the
    render, as users bring), or None for the clean renders."""
    ldm = Path(args.ckpt_dir) / "ldm.pt"
    if not ldm.is_file() or not (Path(args.data) / "metadata.json").is_file():
        if rank == 0:
            print(f"{args.stage}: no transfer {kind} (they need {ldm} and the built-in data)")
        return {}
    chain = chain if chain is not None and chain.p > 0 else None
    digest = hashlib.sha256(key + b"".join((Path(args.ckpt_dir) / f).read_bytes()
                                           for f in files if (Path(args.ckpt_dir) / f).is_file()))
    if chain is not None:
        digest.update(repr(chain).encode())
    tag = ((f"-x{per_piece}" if per_piece > 1 else "") + (f"-{split}" if split != "train" else "")
           + ("-rec" if chain is not None else ""))
    path = Path(args.data) / "cache" / f"{kind}-{digest.hexdigest()[:12]}-{args.seed}{tag}.pt"
    if rank == 0 and not path.is_file():
        pairs = data.cross_style_pairs(train, args.seed, per_piece)
        gen = torch.Generator().manual_seed(args.seed)
        jobs = [((chain(train.waves[src][None], gen)[0] if chain is not None else
                  train.waves[src]).numpy(), train.styles[train.labels[tgt]])
                for tgt, src in pairs.items()]
        outs = evaluate.transfer_log_mels(args.ckpt_dir, jobs, train.sample_rate, device,
                                          latents=kind == "latents")
        config.save_checkpoint(path, **{kind: {i: o for i, o in zip(pairs, outs)
                                               if o is not None}})
    if dist.is_initialized():
        dist.barrier()
    return torch.load(path, map_location="cpu", weights_only=True)[kind]


def stage_guidediff(args, cfg):
    c = cfg.guidediff
    rank, world, device = setup_distributed(args.device)
    train, val = audio_splits(args, cfg, c.clip_seconds, 2.0, rank)
    keep = range(0, len(val), max(1, len(val) // 32))          # 32 clips over all styles
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    val_waves = torch.stack([val[i][0] for i in keep]).to(device)
    val_specs = logmel(val_waves)
    torch.manual_seed(args.seed)
    ae_path = Path(args.ckpt_dir) / "autoencoder.pt"   # round trips, if there is one
    autoencoder = (ae_lib.from_checkpoint(config.load_checkpoint(ae_path, "autoencoder"))
                   .to(device).requires_grad_(False) if c.round_trip > 0 and ae_path.is_file()
                   else None)
    model = guidediff.GuideDiffTraining(guidediff.build(cfg), logmel, c,
                                        augment.Chain(cfg.audio.sample_rate, p=c.augment),
                                        autoencoder).to(device)
    guides = (cached_transfers(args, train, rank, device, "guides",
                               ("autoencoder.pt", "ldm.pt", "distill.pt"))
              if c.transfer_guides > 0 else {})
    if guides:
        frames = logmel(torch.zeros(1, train.clip, device=device)).shape[-1]
        train = data.GuidedClips(train, guides, c.transfer_guides, cfg.audio.hop, frames)
        if rank == 0:
            print(f"guidediff: {len(guides)} transfer guides, {c.transfer_guides:.0%} of a batch")

    def loss_fn(net, batch, step):
        if guides:
            return net(batch[0], batch[2], batch[3])
        return net(batch[0])

    def validate(ema):
        levels = guidediff.candidate_schedules(c.default_steps)[0]
        l1, mr = guidediff.score_vocoder(ema.model, val_specs, val_waves, logmel, levels)
        return {"val_logmel_l1": l1, "val_mrstft": mr}

    def extra(ema):
        return dict(config=config.config_to_dict(cfg), styles=train.styles)

    ema = train_loop(model, loss_fn, train, c, LoopOptions.from_args(args), "guidediff",
                     validate, extra, export=lambda ema: ema.model)
    if rank == 0:                  # the few-step schedules, searched once on the val clips
        schedules = guidediff.search_schedules(ema.model, val_specs, val_waves, logmel,
                                               c.search_steps)
        path = Path(args.ckpt_dir) / "guidediff.pt"
        ckpt = config.load_checkpoint(path, "guidediff")
        config.save_checkpoint(path, **ckpt, schedules=schedules, default_steps=c.default_steps)
        n = sum(p.numel() for p in ema.model.parameters())
        print(f"guidediff: {n} parameters; schedules {schedules}")


def stage_baselines(args, cfg):
    """Train the paper's baselines (baselines/), or just --baseline NAME."""
    for name in [args.baseline] if args.baseline else baselines.NAMES:
        baselines.module(name).train(args, cfg, KIT)


def stage_eval(args, cfg):
    """The results tables: evaluate.py scores, report.py writes (see its docstring)."""
    opts, command = evaluate.EvalOptions.from_args(args), "python " + " ".join(sys.argv)
    if args.only_real:                      # development: the real-set table alone
        print(report.save(evaluate.evaluate_real_only(opts, command), args.results, "real"))
    elif args.sweep:
        print(report.save(evaluate.evaluate_sweep(opts, command), args.results, "sweep"))
    else:                                   # --rows: development rows, never RESULTS.md
        print(report.save(evaluate.evaluate(opts, command), args.results,
                          "rows" if args.rows else "results"))


STAGES = {"data": stage_data, "classifier": stage_classifier, "autoencoder": stage_autoencoder,
          "ldm": stage_ldm, "distill": lambda args, cfg: distill.train(args, cfg, KIT),
          "guidediff": stage_guidediff,
          "baselines": stage_baselines, "eval": stage_eval}
KIT = argparse.Namespace(  # what the stages in baselines/ and distill.py use of this file
    train_loop=train_loop, options=LoopOptions.from_args, audio_splits=audio_splits,
    setup_distributed=setup_distributed, latent_datasets=latent_datasets)


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
                   help="data: pieces to build (default: preset); eval: pieces of each split "
                   "to score (default 12)")
    g = p.add_argument_group("eval stage")
    g.add_argument("--sweep", action="store_true", help="the LDM strength x guidance sweep "
                   "on val (2 pieces, 4 s): results/sweep.json and SWEEP.md")
    g.add_argument("--rows", default=None, metavar="REGEX",
                   help="development: score only the rows whose name matches, on --split; "
                        "written to results/rows.json, never to RESULTS.md")
    g.add_argument("--split", default="test", choices=("test", "val"),
                   help="with --rows: the split to score (tune on val)")
    g.add_argument("--no-speed", action="store_true", help="skip the speed table (5 min)")
    g.add_argument("--real", nargs="+", metavar="DIR", help="folders of real recordings: "
                   "excerpts of their files go into every style (the real-set table)")
    g.add_argument("--real-files", type=int, default=6, metavar="N",
                   help="with --real: excerpts from N files of each folder, spread evenly")
    g.add_argument("--real-tune", type=int, default=0, metavar="N",
                   help="development, with --only-real: excerpts from N files of each folder "
                        "that the --real-files selection leaves out (tune here, report there)")
    g.add_argument("--only-real", action="store_true", help="development: the real-set table "
                   "alone, to results/real.json and REAL.md, never RESULTS.md")
    g.add_argument("--settings", metavar="JSON", help="development, with --rows or --only-real: "
                   "transfer() settings to score, e.g. '{\"guidance\": 5, \"teacher\": true}'")
    p.add_argument("--compile", action="store_true", help="torch.compile the trained model")
    p.add_argument("--baseline", choices=baselines.NAMES, help="baselines: train only this one")
    p.add_argument("--student-steps", type=int, metavar="N", help="distill: the student's "
                   "steps (its teacher takes 2N; default: preset)")
    p.add_argument("--resume", action="store_true", help="continue from CKPT_DIR/STAGE.train.pt "
                   "(eval: take the rows an interrupted run at this commit kept in RUNS/eval)")
    p.add_argument("--init", metavar="CKPT", help="start from the weights of a finished "
                   "STAGE.pt (fine-tuning; a fresh optimiser and schedule)")
    p.add_argument("--decoder-only", action="store_true", help="autoencoder, with --init: "
                   "train the decoder alone (the latents the LDM learned stay the same)")
    p.add_argument("--transfer-latents", type=float, default=None, metavar="SHARE",
                   help="with --decoder-only: the share of a batch decoded from transfers' "
                   "latents against the target render (default: preset, 0.5; 0 turns it off)")
    p.add_argument("--fix-decoder-norms", action="store_true", help="with --decoder-only: "
                   "fold the decoder's GroupNorms into fixed scales (a purely convolutional "
                   "decoder: a song decodes the same in blocks as whole), then train it")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: preset)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPU and CUDA)")
    p.add_argument("--val-every", type=int, default=200, help="validation interval (steps)")
    p.add_argument("--save-every", type=int, default=200, help="checkpoint interval (steps)")
    g = p.add_argument_group("data stage")
    g.add_argument("--out", default="data/builtin", help="where the built-in dataset is written")
    g.add_argument("--seconds", type=float, default=None, help="length of each piece (eval, "
                   "with --rows: score the first SECONDS of each)")
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
