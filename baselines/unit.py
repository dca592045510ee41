"""UNIT (Liu, Breuel & Kautz 2017): unsupervised translation through a shared latent space.

One VAE-GAN per style of a pair. The two encoders share their last layer and the two
decoders their first, so that a clip and its translation land on the same latent code z
(the shared-latent assumption): a -> b is G_b(E_a(a)). Losses (their Eq. 2-5, weights of
the authors' code; UNITConfig): a VAE per style (reconstruction L1 + KL), a least-squares
GAN on each translation, and the cycle a -> b -> a (reconstruction L1 + KL of the
re-encoded translation). Like CycleGAN (cyclegan.py, whose blocks, discriminators and GAN
loop this file reuses) it knows one pair: N styles need N (N - 1) / 2 models.

Compact: widths 16-32-64, one own and one shared residual block per encoder and decoder;
q(z | x) = N(E(x), I), the authors' fixed unit variance. Fully convolutional over time.

    spec a (B, 1, n_mels, T) -E_a-> z (B, 4c, n_mels/4, T/4) -G_b-> spec b (B, 1, n_mels, T)
    python train.py --stage baselines --baseline unit --bf16
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoencoder import SILENCE
from baselines.cyclegan import (ResBlock, conv_block, discriminators, load_pair_model,
                                lsgan_g_loss, pair_systems, train_gan)

KIND = "transfer"


class UNIT(nn.Module):
    """Encoders E_a, E_b and decoders G_a, G_b around a shared latent space."""

    def __init__(self, channels=16, res_blocks=2):
        super().__init__()
        c = channels

        def encoder():
            return nn.Sequential(conv_block(1, c, 7),
                                 conv_block(c, 2 * c, 3, stride=2),      # (B, 2c, F/2, T/2)
                                 conv_block(2 * c, 4 * c, 3, stride=2),  # (B, 4c, F/4, T/4)
                                 *[ResBlock(4 * c) for _ in range(res_blocks - 1)])

        def decoder():
            return nn.Sequential(*[ResBlock(4 * c) for _ in range(res_blocks - 1)],
                                 nn.Upsample(scale_factor=2.0), conv_block(4 * c, 2 * c, 3),
                                 nn.Upsample(scale_factor=2.0), conv_block(2 * c, c, 3),
                                 nn.Conv2d(c, 1, 7, padding=3))          # (B, 1, F, T)

        self.encoders = nn.ModuleDict({"a": encoder(), "b": encoder()})
        self.shared_encoder = ResBlock(4 * c)     # the last layer of E_a and E_b
        self.shared_decoder = ResBlock(4 * c)     # the first layer of G_a and G_b
        self.decoders = nn.ModuleDict({"a": decoder(), "b": decoder()})

    def encode(self, spec, style):
        """The posterior mean E_style(spec), (B, 4c, F/4, ceil(T/4)); any length."""
        assert spec.shape[-2] % 4 == 0, "the mel axis must be a multiple of 4"
        padded = F.pad(spec, (0, -spec.shape[-1] % 4), value=SILENCE)
        return self.shared_encoder(self.encoders[style](padded))

    def decode(self, z, style, frames):
        return self.decoders[style](self.shared_decoder(z))[..., :frames]  # (B, 1, F, T)

    def translate(self, spec, to_b):
        src, tgt = ("a", "b") if to_b else ("b", "a")
        return self.decode(self.encode(spec, src), tgt, spec.shape[-1])


def kl_term(mu):
    """KL(N(mu, I) || N(0, I)) = |mu|^2 / 2 summed; the authors' code weighs mean(mu^2)."""
    return mu.pow(2).mean()


def generator_loss(model, disc, real_a, real_b, gan_weight=1.0, recon_weight=10.0,
                   kl_weight=0.01, cycle_weight=10.0, cycle_kl_weight=0.01):
    """The encoders' and decoders' objective (Liu et al. Eq. 1 without the discriminators'
    side). Returns (loss, (fake_a, fake_b), logs) for cyclegan.train_gan."""
    frames = real_a.shape[-1]
    h_a, h_b = model.encode(real_a, "a"), model.encode(real_b, "b")
    z_a, z_b = h_a + torch.randn_like(h_a), h_b + torch.randn_like(h_b)  # reparameterisation
    recon_a, recon_b = model.decode(z_a, "a", frames), model.decode(z_b, "b", frames)
    fake_b, fake_a = model.decode(z_a, "b", frames), model.decode(z_b, "a", frames)
    h_ab, h_ba = model.encode(fake_b, "b"), model.encode(fake_a, "a")   # back to the shared z
    cycle_a = model.decode(h_ab + torch.randn_like(h_ab), "a", frames)
    cycle_b = model.decode(h_ba + torch.randn_like(h_ba), "b", frames)
    adv = lsgan_g_loss(disc["b"](fake_b)) + lsgan_g_loss(disc["a"](fake_a))
    recon = (recon_a - real_a).abs().mean() + (recon_b - real_b).abs().mean()
    kl = kl_term(h_a) + kl_term(h_b)
    cycle = (cycle_a - real_a).abs().mean() + (cycle_b - real_b).abs().mean()
    cycle_kl = kl_term(h_ab) + kl_term(h_ba)
    loss = (gan_weight * adv + recon_weight * recon + kl_weight * kl + cycle_weight * cycle
            + cycle_kl_weight * cycle_kl)
    return loss, (fake_a, fake_b), dict(adv=adv.item(), recon=recon.item(), kl=kl.item(),
                                        cycle=cycle.item(), cycle_kl=cycle_kl.item())


def train(args, cfg, kit):
    c = cfg.unit
    torch.manual_seed(args.seed)
    weights = dict(gan_weight=c.gan_weight, recon_weight=c.recon_weight, kl_weight=c.kl_weight,
                   cycle_weight=c.cycle_weight, cycle_kl_weight=c.cycle_kl_weight)
    ema, logs = train_gan("unit", UNIT(c.channels, c.res_blocks), discriminators(c.disc_channels),
                          lambda g, d, a, b: generator_loss(g, d, a, b, **weights), c, args, cfg,
                          kit)
    size = (Path(args.ckpt_dir) / "baselines" / "unit.pt").stat().st_size
    print(f"unit {c.pair[0]}<->{c.pair[1]}: {sum(p.numel() for p in ema.parameters())} "
          f"encoder and decoder parameters, {size / 1e6:.2f} MB; last step {logs}")


def systems(ckpt_dir, cfg, logmel, styles, waves):
    loaded = load_pair_model(ckpt_dir, "unit", lambda cfg: UNIT(cfg.unit.channels,
                                                                 cfg.unit.res_blocks), cfg.audio)
    if loaded is None:
        return {}
    model, trained_cfg = loaded
    return pair_systems(model, "UNIT", trained_cfg.unit.pair, logmel)
