"""CycleGAN (Zhu et al. 2017) on log-mel spectrograms: the paper's one-model-per-pair baseline.

Two generators translate between ONE pair of styles, G_ab: a -> b and G_ba: b -> a (the
paper's G and F), each judged by a PatchGAN discriminator in its target style with the
least-squares GAN loss (Mao et al. 2017). Unpaired clips suffice because of the cycle loss
(Eq. 2): G_ba(G_ab(a)) must give back a, and G_ab(G_ba(b)) b. As the paper under
reproduction points out, such a model knows one pair only: N styles need N (N - 1) / 2
models, 15 for the 6 styles here, and this file trains one (default piano <-> rock).

Smaller than Zhu et al.'s ResNet generator (widths 16-32-64, four residual blocks instead of
nine), nearest-neighbour upsampling instead of transposed convolutions, and no pool of
past fakes. Each generator adds its output to its input (a change of timbre on top of
the notes). The identity term weighs 1, not Zhu et al.'s 5 (0.5 lambda): at 5, and also when
the generators start exactly at the identity, the L1 terms hold them at the identity while
the discriminators win (measured on this data: no translation after 300 steps). Fully
convolutional: a whole 12 s piece is translated in one call.

    spec a (B, 1, n_mels, T) -G_ab-> spec b (B, 1, n_mels, T) -G_ba-> spec a; Griffin-Lim -> wave

The GAN loop below (two optimizers, so not train.train_loop) also trains UNIT (unit.py).
    python train.py --stage baselines --baseline cyclegan --bf16
"""
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import baselines
import config
from autoencoder import SILENCE, PatchDiscriminator
from stft import LogMel

KIND = "transfer"


# ---------------------------------------------------------------- model
def conv_block(c_in, c_out, kernel, stride=1):
    """Conv -> InstanceNorm -> ReLU: Zhu et al.'s "c7s1-k" and "dk" units (their App. 7.2)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2),
                         nn.InstanceNorm2d(c_out), nn.ReLU())


class ResBlock(nn.Module):
    """Two 3x3 conv-InstanceNorm layers and a skip ("Rk", after Johnson et al. 2016)."""

    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding=1), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.block(x)


class Generator(nn.Module):
    """ResNet generator: down twice, residual blocks at 4c channels, up twice, + the input."""

    def __init__(self, channels=16, res_blocks=4):
        super().__init__()
        c = channels
        self.net = nn.Sequential(
            conv_block(1, c, 7),
            conv_block(c, 2 * c, 3, stride=2),                 # (B, 2c, F/2, T/2)
            conv_block(2 * c, 4 * c, 3, stride=2),             # (B, 4c, F/4, T/4)
            *[ResBlock(4 * c) for _ in range(res_blocks)],
            nn.Upsample(scale_factor=2.0), conv_block(4 * c, 2 * c, 3),   # (B, 2c, F/2, T/2)
            nn.Upsample(scale_factor=2.0), conv_block(2 * c, c, 3),       # (B, c, F, T)
            nn.Conv2d(c, 1, 7, padding=3))
        nn.init.normal_(self.net[-1].weight, 0.0, 0.02)        # CycleGAN's init: near, not
        nn.init.zeros_(self.net[-1].bias)                      # at, the identity (see above)

    def forward(self, spec):
        assert spec.shape[-2] % 4 == 0, "the mel axis must be a multiple of 4"
        frames = spec.shape[-1]
        padded = F.pad(spec, (0, -frames % 4), value=SILENCE)  # any length: pad with silence
        return spec + self.net(padded)[..., :frames]           # (B, 1, F, T)


class CycleGAN(nn.Module):
    """The two generators of a style pair (a, b)."""

    def __init__(self, channels=16, res_blocks=4):
        super().__init__()
        self.G_ab, self.G_ba = Generator(channels, res_blocks), Generator(channels, res_blocks)

    def translate(self, spec, to_b):
        return self.G_ab(spec) if to_b else self.G_ba(spec)


def discriminators(channels):
    """A PatchGAN per style: one real/fake score per spectrogram patch, (B, 1, F/8, T/8)."""
    return nn.ModuleDict({"a": PatchDiscriminator(channels), "b": PatchDiscriminator(channels)})


# ---------------------------------------------------------------- losses
def lsgan_d_loss(real_logits, fake_logits):
    """Least squares (Mao et al. 2017): real patches to 1, fakes to 0."""
    return 0.5 * ((real_logits - 1) ** 2).mean() + 0.5 * (fake_logits ** 2).mean()


def lsgan_g_loss(fake_logits):
    return ((fake_logits - 1) ** 2).mean()


def generator_loss(model, disc, real_a, real_b, cycle_weight=10.0, identity_weight=5.0):
    """Zhu et al. Eq. 3, L_GAN(G_ab, D_b) + L_GAN(G_ba, D_a) + lambda L_cyc, plus their
    identity term (Sec. 5.2: a generator given its own target style should change nothing).
    Returns (loss, (fake_a, fake_b), logs)."""
    fake_b, fake_a = model.G_ab(real_a), model.G_ba(real_b)
    adv = lsgan_g_loss(disc["b"](fake_b)) + lsgan_g_loss(disc["a"](fake_a))
    cycle = ((model.G_ba(fake_b) - real_a).abs().mean()                  # Eq. 2
             + (model.G_ab(fake_a) - real_b).abs().mean())
    identity = ((model.G_ab(real_b) - real_b).abs().mean()
                + (model.G_ba(real_a) - real_a).abs().mean())
    loss = adv + cycle_weight * cycle + identity_weight * identity
    return loss, (fake_a, fake_b), dict(adv=adv.item(), cycle=cycle.item(),
                                        identity=identity.item())


def discriminator_loss(disc, real_a, real_b, fake_a, fake_b):
    """Each discriminator tells its style's real clips from the translations into it."""
    return (lsgan_d_loss(disc["a"](real_a), disc["a"](fake_a))
            + lsgan_d_loss(disc["b"](real_b), disc["b"](fake_b)))


# ---------------------------------------------------------------- training (CycleGAN and UNIT)
def style_batch(dataset, indices, batch_size):
    """Random clips of one style, (B, N): a random file each, cropped at random."""
    picks = torch.randint(len(indices), (batch_size,))
    return torch.stack([dataset[indices[i]][0] for i in picks])


def half_weights(module):
    """Inference weights in half precision: half the file, no audible difference."""
    return {k: v.half() if v.is_floating_point() else v for k, v in module.state_dict().items()}


def train_gan(name, model, disc, generator_loss, c, args, cfg, kit):
    """Alternate a generator step and a discriminator step on a batch of each style of
    c.pair. Adam with beta1 = 0.5 (AdamW: c.weight_decay, 0 for CycleGAN), the learning rate
    held, then decayed linearly to 0 over the second half (Zhu et al. Sec. 4); EMA of the
    generators; optional bf16 autocast.

    generator_loss(model, disc, real_a, real_b) -> (loss, (fake_a, fake_b), logs). Writes
    CKPT_DIR/baselines/NAME.pt (EMA generators in fp16) and NAME.train.pt (for --resume).
    Returns the EMA model and the last step's logs.
    """
    rank, world, device = kit.setup_distributed(args.device)
    if world > 1:
        raise ValueError(f"the {name} baseline trains in one process; run it without torchrun")
    assert c.grad_accum == 1, "the GAN loop does not accumulate gradients"
    train_set, _ = kit.audio_splits(args, cfg, c.clip_seconds, c.clip_seconds, rank)
    missing = [s for s in c.pair if s not in train_set.styles]
    if missing:
        raise ValueError(f"style(s) {missing} of the {name} pair are not in {args.data} "
                         f"(styles: {', '.join(train_set.styles)}); set the pair in config.py")
    by_style = [[i for i, y in enumerate(train_set.labels) if y == train_set.styles.index(s)]
                for s in c.pair]
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    model, disc = model.to(device), disc.to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt_g = torch.optim.AdamW(model.parameters(), c.lr, (0.5, 0.999), weight_decay=c.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), c.lr, (0.5, 0.999), weight_decay=c.weight_decay)
    ckpt_path = Path(args.ckpt_dir) / "baselines" / f"{name}.pt"
    state_path, start = ckpt_path.with_suffix(".train.pt"), 0
    if args.resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=True)
        for part, key in ((model, "model"), (disc, "disc"), (ema, "ema"), (opt_g, "opt_g"),
                          (opt_d, "opt_d")):
            part.load_state_dict(state[key])
        start = state["step"]
    steps = args.steps or c.steps
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    log_path = Path(args.runs) / "baselines" / name / "log.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    bar, t0 = tqdm(range(start, steps), desc=name, initial=start, total=steps), time.perf_counter()
    logs = {}
    for step in bar:
        torch.manual_seed(args.seed * 1_000_003 + step)     # batches and noise: a function of step
        lr = c.lr * min(1.0, (step + 1) / max(1, c.warmup), 2 * (1 - step / steps))
        for group in opt_g.param_groups + opt_d.param_groups:
            group["lr"] = lr
        real_a, real_b = (logmel(style_batch(train_set, idx, c.batch_size).to(device))
                          for idx in by_style)                            # (B, 1, n_mels, T)
        disc.requires_grad_(False)                          # the generator step leaves D alone
        with autocast:
            g_loss, fakes, logs = generator_loss(model, disc, real_a, real_b)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        disc.requires_grad_(True)
        with autocast:
            d_loss = discriminator_loss(disc, real_a, real_b, *(f.detach() for f in fakes))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with torch.no_grad():                               # ema <- decay ema + (1 - decay) model
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - c.ema)
        done = step + 1
        logs.update(step=done, g_loss=g_loss.item(), d_loss=d_loss.item(), lr=lr,
                    steps_per_s=(done - start) / (time.perf_counter() - t0))
        bar.set_postfix({k: f"{logs[k]:.3g}" for k in ("g_loss", "d_loss", "cycle")})
        with open(log_path, "a") as log:
            log.write(json.dumps(logs) + "\n")
        if done % args.save_every == 0 or done == steps:
            config.save_checkpoint(state_path, model=model.state_dict(), disc=disc.state_dict(),
                                   ema=ema.state_dict(), opt_g=opt_g.state_dict(),
                                   opt_d=opt_d.state_dict(), step=done)
            config.save_checkpoint(ckpt_path, model=half_weights(ema), step=done,
                                   config=config.config_to_dict(cfg))
    return ema, logs


def train(args, cfg, kit):
    c = cfg.cyclegan
    torch.manual_seed(args.seed)
    model = CycleGAN(c.channels, c.res_blocks)
    ema, logs = train_gan("cyclegan", model, discriminators(c.disc_channels),
                          lambda g, d, a, b: generator_loss(g, d, a, b, c.cycle_weight,
                                                            c.identity_weight), c, args, cfg, kit)
    size = (Path(args.ckpt_dir) / "baselines" / "cyclegan.pt").stat().st_size
    print(f"cyclegan {c.pair[0]}<->{c.pair[1]}: {sum(p.numel() for p in ema.parameters())} "
          f"generator parameters, {size / 1e6:.2f} MB; last step {logs}")


# ---------------------------------------------------------------- inference
def load_pair_model(ckpt_dir, name, build, audio):
    """(model, its Config) from CKPT_DIR/baselines/NAME.pt, or None when there is none;
    build(cfg) makes the empty model; `audio` is the evaluation's front end, which must match."""
    loaded = baselines.load_checkpoint(ckpt_dir, name, audio)
    if loaded is None:
        return None
    ckpt, cfg = loaded
    return config.load_weights(build(cfg), ckpt, f"baselines --baseline {name}"), cfg


def pair_systems(model, label, pair, logmel):
    """{row: system} for a one-pair model: translate the log-mel of the whole piece, then
    Griffin-Lim (64 iterations, like the main system's Griffin-Lim rows) back to a wave."""
    a, b = pair

    @torch.no_grad()
    def system(wave, src, tgt, piece):
        assert (src, tgt) in system.pairs, f"{label} knows only {a}<->{b}"
        spec = model.translate(logmel(wave[None]), to_b=src == a)      # (1, 1, n_mels, T)
        return logmel.inverse(spec, n_iter=64, length=len(wave),
                              generator=torch.Generator().manual_seed(0))[0]

    system.pairs = {(a, b), (b, a)}
    return {f"{label} {a}<->{b} + Griffin-Lim (baseline)": system}


def systems(ckpt_dir, cfg, logmel, styles, waves):
    loaded = load_pair_model(ckpt_dir, "cyclegan", lambda cfg: CycleGAN(
        cfg.cyclegan.channels, cfg.cyclegan.res_blocks), cfg.audio)
    if loaded is None:
        return {}
    model, trained_cfg = loaded
    return pair_systems(model, "CycleGAN", trained_cfg.cyclegan.pair, logmel)
