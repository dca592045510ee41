"""A MusicVAE-style baseline: style transfer by swapping the style code of a conditional VAE.

MusicVAE (Roberts et al. 2018) is a VAE over *symbolic* music (note sequences), with a
bidirectional LSTM encoder and a hierarchical "conductor" LSTM decoder; transfer with it
means editing the latent code. That model cannot read audio, so this file is an
audio-domain adaptation, not MusicVAE itself: a conditional VAE (Sohn et al. 2015) over
log-mel frames -- 1-D convolutions along time with the mel bins as channels, one latent
vector per 4 frames (64 ms) instead of MusicVAE's one per bar -- whose encoder and decoder
both receive a learned style code. The decoder gets the style for free, so the KL term
pushes the latent to keep what the code cannot tell, ideally the notes. Transfer encodes
a piece with its source code and decodes it with the target code swapped in. One model
serves every ordered pair of styles (30 here), unlike CycleGAN and UNIT.

    spec (B, 1, n_mels, T), style (B,) -encode-> z (B, c, ceil(T/4)) -decode(target)-> spec
    python train.py --stage baselines --baseline musicvae
"""
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import baselines
import config
from autoencoder import SILENCE, DiagonalGaussian
from stft import LogMel

KIND = "transfer"
STAGE = "baselines --baseline musicvae"


def with_style(h, code):
    """Append the style code to every frame: (B, C, T), (B, S) -> (B, C + S, T)."""
    return torch.cat([h, code[:, :, None].expand(-1, -1, h.shape[-1])], dim=1)


class MusicVAE(nn.Module):
    """q(z | x, s) and p(x | z, s) over log-mel frames, s a learned style code."""

    def __init__(self, n_styles, n_mels=128, hidden=192, latent_channels=16, style_dim=32):
        super().__init__()
        self.style = nn.Embedding(n_styles, style_dim)
        self.encoder = nn.Sequential(
            nn.Conv1d(n_mels + style_dim, hidden, 5, padding=2), nn.SiLU(),
            nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), nn.SiLU(),       # (B, H, T/2)
            nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), nn.SiLU(),       # (B, H, T/4)
            nn.Conv1d(hidden, 2 * latent_channels, 3, padding=1))               # mean, log var
        self.decoder_in = nn.Conv1d(latent_channels + style_dim, hidden, 3, padding=1)
        self.decoder = nn.Sequential(
            nn.SiLU(), nn.Upsample(scale_factor=2.0), nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.SiLU(), nn.Upsample(scale_factor=2.0), nn.Conv1d(hidden, hidden, 5, padding=2),
            nn.SiLU())                                                          # (B, H, T)
        # The code again at the last layer: timbre is the spectral shape of every frame.
        self.decoder_out = nn.Conv1d(hidden + style_dim, n_mels, 5, padding=2)

    def encode(self, spec, style):
        """Posterior q(z | spec, style) over (B, c, ceil(T/4)); any length (silence-padded)."""
        x = F.pad(spec.squeeze(1), (0, -spec.shape[-1] % 4), value=SILENCE)   # (B, n_mels, T)
        return DiagonalGaussian(self.encoder(with_style(x, self.style(style))))

    def decode(self, z, style, frames):
        code = self.style(style)                                               # (B, S)
        h = self.decoder(self.decoder_in(with_style(z, code)))                 # (B, H, 4T')
        return self.decoder_out(with_style(h, code))[..., :frames].unsqueeze(1)  # (B, 1, F, T)

    def forward(self, spec, style):
        posterior = self.encode(spec, style)
        z = posterior.sample() if self.training else posterior.mode()
        return self.decode(z, style, spec.shape[-1]), posterior

    def transfer(self, spec, source, target):
        """Encode with the source style's code, decode with the target's: the latent swap."""
        return self.decode(self.encode(spec, source).mode(), target, spec.shape[-1])


def vae_loss(model, spec, style, kl_weight=1.0):
    """Negative ELBO per spectrogram value: L1 (a Laplace likelihood of unit scale) +
    kl_weight x KL(q(z | x, s) || N(0, I)) in nats per value."""
    recon, posterior = model(spec, style)
    return (recon - spec).abs().mean() + kl_weight * posterior.kl().mean() / spec[0].numel()


def build(c, n_styles, n_mels):
    return MusicVAE(n_styles, n_mels, c.hidden, c.latent_channels, c.style_dim)


def train(args, cfg, kit):
    c = cfg.musicvae
    rank, world, device = kit.setup_distributed(args.device)
    train_set, val = kit.audio_splits(args, cfg, c.clip_seconds, c.clip_seconds, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    keep = range(0, len(val), max(1, len(val) // 64))           # 64 clips over all styles
    val_specs = torch.cat([logmel(val[i][0][None].to(device)) for i in keep])
    val_styles = torch.tensor([val[i][1] for i in keep], device=device)
    torch.manual_seed(args.seed)
    model = build(c, len(train_set.styles), cfg.audio.n_mels).to(device)

    def loss_fn(net, batch, step):
        wave, style = batch
        return vae_loss(net, logmel(wave), style, c.kl_weight)

    @torch.no_grad()
    def validate(ema):
        recon, posterior = ema(val_specs, val_styles)
        return {"val_l1": (recon - val_specs).abs().mean().item(),
                "val_kl": (posterior.kl().mean() / val_specs[0].numel()).item()}

    ema = kit.train_loop(model, loss_fn, train_set, c, kit.options(args), "baselines/musicvae", validate,
                         extra=lambda ema: dict(config=config.config_to_dict(cfg),
                                                styles=train_set.styles))
    if rank == 0:
        size = (Path(args.ckpt_dir) / "baselines" / "musicvae.pt").stat().st_size
        print(f"musicvae: {sum(p.numel() for p in ema.parameters())} parameters, "
              f"{size / 1e6:.2f} MB, {len(train_set.styles)} styles; {validate(ema)}")


def load(ckpt_dir, audio):
    """(model, its styles) from CKPT_DIR/baselines/musicvae.pt, or None when there is none."""
    loaded = baselines.load_checkpoint(ckpt_dir, "musicvae", audio)
    if loaded is None:
        return None
    ckpt, cfg = loaded
    model = build(cfg.musicvae, len(ckpt["styles"]), cfg.audio.n_mels)
    return config.load_weights(model, ckpt, STAGE), ckpt["styles"]


def systems(ckpt_dir, cfg, logmel, styles, waves):
    loaded = load(ckpt_dir, cfg.audio)
    if loaded is None:
        return {}
    model, known = loaded

    @torch.no_grad()
    def system(wave, src, tgt, piece):
        spec = logmel(wave[None])                                       # (1, 1, n_mels, T)
        spec = model.transfer(spec, torch.tensor([known.index(src)]),
                              torch.tensor([known.index(tgt)]))
        return logmel.inverse(spec, n_iter=64, length=len(wave),
                              generator=torch.Generator().manual_seed(0))[0]

    system.pairs = {(s, t) for s in known for t in known if s != t and {s, t} <= set(styles)}
    return {"MusicVAE-style latent swap + Griffin-Lim (baseline)": system}
