"""The perceptual autoencoder: log-mel spectrogram <-> a small latent (perceptual compression).

Latent diffusion (Rombach et al. 2022, Sec. 3.1) runs the diffusion model in the latent
space of a KL-regularised autoencoder instead of on the spectrogram itself; the paper does
the same with spectrograms. The encoder gives a diagonal Gaussian posterior q(z | x); the
loss is reconstruction (L1 + a multi-scale spectral term) + a small KL weight, with an
optional patch discriminator (hinge loss) switched on after a warm-up.

    spec (B, 1, n_mels, T) -encode-> posterior over z (B, c, n_mels/f, ceil(T/f)) -decode-> spec
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import config

SILENCE = -3.3  # normalised log-mel of silence (log 1e-5, config.AudioConfig): pad value


def _norm(channels, kind="group"):
    if kind == "fixed":
        return FixedNorm(channels)
    return nn.GroupNorm(min(32, channels // 4), channels)


class FixedNorm(nn.Module):
    """A GroupNorm whose statistics are constants: a per-channel scale and shift, so the
    output at a frame depends on its neighbourhood alone, not on how long the input is.

    GroupNorm normalises each input by its own mean and variance, taken over the whole
    input: a decoder built of it decodes a song's 33-s blocks a little differently from
    the 2-s clips it was trained on, and a short last block differently again.
    fold_decoder_norms turns a trained decoder's GroupNorms into these, with the mean and
    variance they saw on typical latents; the decoder is then purely convolutional."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1).to(x.dtype) + \
            self.shift.view(1, -1, 1, 1).to(x.dtype)


@torch.no_grad()
def fold_decoder_norms(model, latents):
    """Replace the decoder's GroupNorms by FixedNorms that normalise by the statistics
    each saw over `latents` (B, C, F, L): per group, the mean of the items' means and
    variances. With one latent (B = 1) the decoder's output on it is unchanged."""
    norms = [(parent, name, child) for parent in model.decoder.modules()
             for name, child in parent.named_children() if isinstance(child, nn.GroupNorm)]
    stats = {}

    def record(module, args):
        x = args[0].float()
        g = x.reshape(x.shape[0], module.num_groups, -1)
        stats[module] = (g.mean(-1).mean(0), g.var(-1, unbiased=False).mean(0))
    hooks = [child.register_forward_pre_hook(record) for _, _, child in norms]
    model.decode(latents)
    for h in hooks:
        h.remove()
    for parent, name, gn in norms:
        mean, var = stats[gn]
        per = gn.num_channels // gn.num_groups
        mean, inv = mean.repeat_interleave(per), (var + gn.eps).rsqrt().repeat_interleave(per)
        fixed = FixedNorm(gn.num_channels).to(gn.weight)
        fixed.scale.copy_(gn.weight * inv)
        fixed.shift.copy_(gn.bias - gn.weight * inv * mean)
        setattr(parent, name, fixed)
    return model


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual connection (1x1 conv when widths differ);
    norm="fixed" puts FixedNorms in place of the GroupNorms."""

    def __init__(self, c_in, c_out, norm="group"):
        super().__init__()
        self.block = nn.Sequential(_norm(c_in, norm), nn.SiLU(),
                                   nn.Conv2d(c_in, c_out, 3, padding=1),
                                   _norm(c_out, norm), nn.SiLU(),
                                   nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)                                   # (B, C, F/2, T/2)


# Nearest-neighbour x2 then a 3x3 conv (taps w0 w1 w2 along an axis) is a transposed
# convolution, stride 2, of the input with the 4 taps K = (w2, w1 + w2, w0 + w1, w0): output
# row 2i reads x[i] (taps 1 and 2 fall on it) and x[i - 1] (tap 0); row 2i + 1 reads x[i]
# (taps 0, 1) and x[i + 1] (tap 2). RESIZE_TAPS[k, j] = 1 where tap j adds to K[k].
RESIZE_TAPS = torch.tensor([[0, 0, 1.0], [0, 1, 1], [1, 1, 0], [1, 0, 0]])


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv, computed without the upsampled tensor, as one
    transposed convolution (4x4 kernel, stride 2) whose taps are sums of the 3x3 kernel's
    (the sub-pixel view of resize-convolution, Odena et al. 2016; Aitken et al. 2017): 16
    multiply-adds an input pixel and channel pair instead of 36, and 3-9x less time on a CPU
    in channels-last bf16. `plain` is the definition (tests compare the two)."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def plain(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))

    def forward(self, x):
        w, taps = self.conv.weight, RESIZE_TAPS.to(self.conv.weight)    # (C_out, C_in, 3, 3)
        kernel = torch.einsum("kj,oijl,ml->iokm", taps, w, taps)       # (C_in, C_out, 4, 4)
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)  # (B, C, 2F, 2T)


def channels_last(x):
    """Channels-last layout (B, H, W, C in memory): the CPU's convolution kernels (oneDNN)
    run on it without reordering, and GroupNorm and SiLU have kernels for it; the decoder
    runs 1.3x faster so (bf16; models.load_models stores the weights so too)."""
    return x.contiguous(memory_format=torch.channels_last)


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))) from the encoder's (B, 2c, ...) output."""

    def __init__(self, moments):
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator=None):
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + self.std * noise                   # reparameterisation trick

    def mode(self):
        return self.mean

    def kl(self):
        """KL(q || N(0, I)) = 0.5 sum(mean^2 + var - 1 - logvar), one value per item (B,)."""
        return 0.5 * (self.mean ** 2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class Autoencoder(nn.Module):
    """Encoder and decoder of ResBlocks; f = 2 ** (len(channels) - 1) along both axes.
    decoder_norm: "group" (GroupNorm) or "fixed" (FixedNorm: a purely convolutional
    decoder, made from a trained one by fold_decoder_norms)."""

    def __init__(self, in_channels=1, channels=(32, 64, 128), latent_channels=4,
                 num_res_blocks=1, decoder_norm="group"):
        super().__init__()
        if decoder_norm not in ("group", "fixed"):
            raise ValueError(f"decoder_norm {decoder_norm!r}: use 'group' or 'fixed'")
        self.factor, self.decoder_norm = 2 ** (len(channels) - 1), decoder_norm
        enc = [nn.Conv2d(in_channels, channels[0], 3, padding=1)]
        for i, c in enumerate(channels):
            c_prev = channels[max(i - 1, 0)]
            enc += [ResBlock(c_prev if j == 0 else c, c) for j in range(num_res_blocks)]
            if i < len(channels) - 1:
                enc.append(Downsample(c))
        enc += [_norm(channels[-1]), nn.SiLU(), nn.Conv2d(channels[-1], 2 * latent_channels, 3,
                                                          padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(latent_channels, channels[-1], 3, padding=1)]
        rev = list(reversed(channels))
        for i, c in enumerate(rev):
            c_prev = rev[max(i - 1, 0)]
            dec += [ResBlock(c_prev if j == 0 else c, c, decoder_norm)
                    for j in range(num_res_blocks)]
            if i < len(rev) - 1:
                dec.append(Upsample(c))
        dec += [_norm(channels[0], decoder_norm), nn.SiLU(),
                nn.Conv2d(channels[0], in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, spec):
        """Pad the time (and mel) axis with silence up to a multiple of f: any length works."""
        pad_f, pad_t = (-spec.shape[-2]) % self.factor, (-spec.shape[-1]) % self.factor
        spec = F.pad(spec, (0, pad_t, 0, pad_f), value=SILENCE)
        moments = self.encoder(channels_last(spec)).contiguous()
        return DiagonalGaussian(moments)                      # z: (B, c, F/f, T/f)

    def decode(self, z, length=None):
        spec = self.decoder(channels_last(z)).contiguous()    # (B, 1, F, T)
        return spec if length is None else spec[..., :length]

    def forward(self, spec, generator=None):
        posterior = self.encode(spec)
        z = posterior.sample(generator) if self.training else posterior.mode()
        recon = self.decode(z)[..., :spec.shape[-2], :spec.shape[-1]]
        return recon, posterior


def multiscale_spectral_loss(spec, recon, scales=(1, 2, 4, 8)):
    """L1 between log-mels average-pooled by 1, 2, 4, 8 (coarse structure weighs more than
    in plain L1), plus spectral convergence of exp(spec), a linear-magnitude proxy that
    stresses the loud bins where the music is."""
    total = 0.0
    for s in scales:
        a = F.avg_pool2d(spec, s, ceil_mode=True) if s > 1 else spec
        b = F.avg_pool2d(recon, s, ceil_mode=True) if s > 1 else recon
        total = total + (a - b).abs().mean()
    mag, mag_hat = spec.exp(), recon.exp()
    sc = ((mag - mag_hat).flatten(1).norm(dim=1) / mag.flatten(1).norm(dim=1)).mean()
    return total / len(scales) + sc


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al. 2017): a logit per spectrogram patch, not one per clip."""

    def __init__(self, channels=(32, 64, 128)):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), _norm(c), nn.LeakyReLU(0.2)]
            c_in = c
        layers.append(nn.Conv2d(c_in, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, spec):
        return self.net(spec)                                  # (B, 1, F/8, T/8)


def hinge_d_loss(real_logits, fake_logits):
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def hinge_g_loss(fake_logits):
    return -fake_logits.mean()


def reconstruction_losses(spec, recon):
    """(L1, multi-scale spectral loss) of a reconstruction against its log-mel."""
    return (recon - spec).abs().mean(), multiscale_spectral_loss(spec, recon)


def autoencoder_loss(model, spec, kl_weight=1e-6, spectral_weight=1.0, discriminator=None,
                     adv_weight=0.0, generator=None):
    """One scalar whose single backward trains the autoencoder and the discriminator.

    The generator's adversarial term sees the discriminator through detached parameters
    (torch.func.functional_call), so it cannot move the discriminator; the discriminator's
    hinge term sees recon.detach(), so it cannot move the autoencoder.
    """
    recon, posterior = model(spec, generator)
    rec, spectral = reconstruction_losses(spec, recon)
    kl = posterior.kl().mean()
    loss = rec + spectral_weight * spectral + kl_weight * kl
    logs = dict(l1=rec.item(), spectral=spectral.item(), kl=kl.item())
    if discriminator is not None:
        frozen = {k: v.detach() for k, v in discriminator.named_parameters()}
        g_adv = hinge_g_loss(torch.func.functional_call(discriminator, frozen, (recon,)))
        d_loss = hinge_d_loss(discriminator(spec), discriminator(recon.detach()))
        loss = loss + adv_weight * g_adv + d_loss
        logs.update(g_adv=g_adv.item(), d_loss=d_loss.item())
    return loss, logs


@torch.no_grad()
def latent_scale(model, specs):
    """1 / std of the posterior means over some spectrograms (latent-diffusion's
    scale_factor), so that the diffusion stage sees unit-variance latents."""
    means = torch.cat([model.encode(s).mode().flatten() for s in specs])
    return float(1.0 / means.std())


def from_checkpoint(ckpt):
    """The Autoencoder of a loaded autoencoder.pt (config.load_checkpoint)."""
    c = config.config_from_dict(ckpt["config"]).autoencoder
    model = Autoencoder(1, c.channels, c.latent_channels, c.num_res_blocks, c.decoder_norm)
    return config.load_weights(model, ckpt, "autoencoder")


class AutoencoderTraining(nn.Module):
    """One autoencoder training step as one forward, so that DDP sees every parameter."""

    def __init__(self, autoencoder, discriminator, c):
        super().__init__()
        self.autoencoder, self.discriminator, self.c = autoencoder, discriminator, c

    def forward(self, spec, adv_weight, latent=None, target=None, share=0.0):
        """The round-trip loss of spec; with latent (B', C, F, L) and target (B', 1, F f,
        L f): (1 - share) of it plus share of the decoder's loss from latent to target
        (transfer latents, decoder-only training)."""
        loss, _ = autoencoder_loss(self.autoencoder, spec, self.c.kl_weight,
                                   self.c.spectral_weight, self.discriminator, adv_weight)
        if latent is None:
            return loss
        recon = self.autoencoder.decode(latent)[..., :target.shape[-1]]
        rec, spectral = reconstruction_losses(target, recon)
        decoded = rec + self.c.spectral_weight * spectral
        if self.c.junction_weight > 0 and self.c.decoder_norm == "group":   # (0 if fixed)
            decoded = decoded + self.c.junction_weight * junction_gap(self.autoencoder, latent,
                                                                      recon)
        return (1 - share) * loss + share * decoded


def junction_gap(autoencoder, latent, whole, margin=6):
    """Mean |decoded whole - decoded as two parts| over the frames more than `margin` latent
    frames (the decoder's reach) from a random cut. Songs decode in blocks, and GroupNorm's
    statistics depend on a block's length: a decoder trained on transfers' latents learns to
    lean on them, and then a short last block decodes differently. This term holds it to one
    output for any cut. whole: decode(latent), cut to its first T frames. Where the
    cut leaves no frame beyond the margin, the gap is 0."""
    L, f, T = latent.shape[-1], autoencoder.factor, whole.shape[-1]
    cut = int(torch.randint(L // 4, L - L // 4 + 1, ()))
    parts = torch.cat([autoencoder.decode(latent[..., :cut]),
                       autoencoder.decode(latent[..., cut:])], -1)[..., :T]
    away = torch.cat([torch.arange(0, max(cut - margin, 0) * f),
                      torch.arange(min((cut + margin) * f, T), T)]).to(whole.device)
    if len(away) == 0:                      # too short to cut with a margin: nothing to hold
        return whole.new_zeros(())
    return (whole - parts).index_select(-1, away).abs().mean()


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
