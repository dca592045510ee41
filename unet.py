"""The latent U-Net and the style encoder: the denoiser of the paper's latent diffusion.

The U-Net (Ronneberger et al. 2015, as used by Ho et al. 2020 and Rombach et al. 2022)
predicts the noise (or v) in a noisy latent, conditioned on the diffusion time through a
sinusoidal embedding and on the style through cross-attention to style tokens (the paper's
multi-to-multi conditioning: one model, any target style).

    z_t (B, C, F, T), t (B,), context (B, M, D) -> prediction (B, C, F, T)
    StyleEncoder: style labels (B,) or reference log-mel (B, 1, n_mels, T') -> tokens (B, M, D)
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import config
import diffusion
from attention import Attention, SpatialTransformer

GUIDANCE_SCALE = 100.0      # w in 0..10 is embedded like timesteps 0..1000
REF_CROPS = 8               # a clip's style: mean of its tokens over up to this many crops


def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (possibly fractional) timesteps (B,) -> (B, dim) (Vaswani 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _norm(channels):
    """GroupNorm with up to 32 groups of at least 4 channels each."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 4
                  or g == 1)
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, residual; the time embedding scales and shifts the second
    normalised activation (FiLM; improved-diffusion's use_scale_shift_norm)."""

    def __init__(self, c_in, c_out, emb_dim, dropout=0.0):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.out_norm = _norm(c_out)
        self.out_layers = nn.Sequential(nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(c_out, c_out, 3, padding=1))
        nn.init.zeros_(self.out_layers[-1].weight)   # start as the identity (improved-diffusion)
        nn.init.zeros_(self.out_layers[-1].bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.in_layers(x)
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_norm(h) * (1 + scale) + shift
        return self.skip(x) + self.out_layers(h)


class UNet(nn.Module):
    """Down path, middle, up path with skip connections; cross-attention at the lower levels.

    channel_mult gives each level's width; a level with attention=True gets a
    SpatialTransformer (self-attention over positions, cross-attention to the style tokens)
    after each ResBlock. Any latent size works: it is padded to a multiple of the total
    down factor and cropped back.
    """

    def __init__(self, in_channels=4, model_channels=64, channel_mult=(1, 2, 2),
                 attention=(False, True, True), num_res_blocks=1, context_dim=128, heads=4,
                 dim_head=32, dropout=0.0, fused_attention=True, out_channels=None,
                 guidance_input=False):
        super().__init__()
        emb_dim = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        # A guidance-distilled student (distill.py) also takes the guidance weight w, embedded
        # like t and added to its embedding (Meng et al. 2023, Sec. 4.1); the last layer
        # starts at zero, so a student starts as its teacher's conditional model.
        self.guidance_embed = None
        if guidance_input:
            self.guidance_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                                nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.guidance_embed[-1].weight)
            nn.init.zeros_(self.guidance_embed[-1].bias)
        self.model_channels, self.factor = model_channels, 2 ** (len(channel_mult) - 1)

        def transformer(c):
            return SpatialTransformer(c, context_dim, heads=heads, dim_head=dim_head,
                                      fused=fused_attention)

        self.input_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)
        self.down, skips, c = nn.ModuleList(), [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [ResBlock(c, mult * model_channels, emb_dim, dropout)]
                c = mult * model_channels
                if attention[level]:
                    layers.append(transformer(c))
                self.down.append(nn.ModuleList(layers))
                skips.append(c)
            if level < len(channel_mult) - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.middle = nn.ModuleList([ResBlock(c, c, emb_dim, dropout), transformer(c),
                                     ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(c + skips.pop(), mult * model_channels, emb_dim, dropout)]
                c = mult * model_channels
                if attention[level]:
                    layers.append(transformer(c))
                if level > 0 and i == num_res_blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(c, c, 3, padding=1))
                self.up.append(nn.ModuleList(layers))
        self.out = nn.Sequential(_norm(c), nn.SiLU(),
                                 nn.Conv2d(c, out_channels or in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    @staticmethod
    def _run(layers, h, emb, context):
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, x, t, context, guidance=None):
        """guidance (B,): the weight w, for a model built with guidance_input."""
        F_, T_ = x.shape[-2:]
        pad_f, pad_t = (-F_) % self.factor, (-T_) % self.factor
        if pad_f or pad_t:                   # any latent size: pad, then crop back at the end
            x = F.pad(x, (0, pad_t, 0, pad_f), mode="replicate")
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(x.dtype))  # (B, 4 C)
        if self.guidance_embed is not None:
            assert guidance is not None, "a guidance-distilled U-Net needs the weight w"
            w = timestep_embedding(guidance * GUIDANCE_SCALE, self.model_channels)
            emb = emb + self.guidance_embed(w.to(x.dtype))
        h = self.input_conv(x)                                              # (B, C, F, T)
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            hs.append(h)
        h = self._run(self.middle, h, emb, context)                       # (B, C', F/f, T/f)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)[..., :F_, :T_]                                   # (B, C, F, T)


class StyleEncoder(nn.Module):
    """Style tokens from a label (a learned token table: "rock" is a word the model knows)
    or from a reference clip's log-mel (any clip names a style: zero-shot), in one space.

    A learned null context stands for "no style" in classifier-free guidance.
    """

    def __init__(self, n_styles, n_mels=128, tokens=4, context_dim=128, channels=(32, 64, 128),
                 heads=4):
        super().__init__()
        self.table = nn.Parameter(torch.randn(n_styles, tokens, context_dim) * 0.5)
        self.null = nn.Parameter(torch.zeros(1, tokens, context_dim))
        convs, c_in = [], 1
        for c in channels:                   # each block halves frequency and time
            convs += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), _norm(c), nn.SiLU()]
            c_in = c
        self.convs = nn.Sequential(*convs)
        freq = n_mels // 2 ** len(channels)
        self.proj = nn.Linear(c_in * freq, context_dim)
        self.queries = nn.Parameter(torch.randn(1, tokens, context_dim) * 0.02)
        self.pool = Attention(context_dim, context_dim, heads=heads, dim_head=context_dim // heads)

    def from_labels(self, labels):
        return self.table[labels]                                           # (B, M, D)

    def from_reference(self, spec):
        h = self.convs(spec)                                                # (B, C, F/8, T/8)
        h = self.proj(h.flatten(1, 2).transpose(1, 2))                      # (B, T/8, D)
        queries = self.queries.expand(len(spec), -1, -1)
        return self.pool(queries, h)                                        # (B, M, D)

    def null_context(self, batch):
        return self.null.expand(batch, -1, -1)                              # (B, M, D)


@torch.no_grad()
def reference_tokens(style_encoder, spec, ref_frames, crops=REF_CROPS):
    """Style tokens (1, M, D) of a log-mel (1, 1, n_mels, T) of any length: the mean over up
    to `crops` evenly spaced crops of ref_frames (the length the encoder was trained on); a
    short clip is looped to fill one."""
    if spec.shape[-1] < ref_frames:
        spec = spec.repeat(1, 1, 1, -(-ref_frames // spec.shape[-1]))
    starts = crop_starts(spec.shape[-1], ref_frames, crops)
    return crop_tokens(style_encoder, [spec[..., s:s + ref_frames] for s in starts])


def crop_starts(T, ref_frames, crops=REF_CROPS):
    n = min(crops, -(-T // ref_frames))
    return torch.linspace(0, T - ref_frames, n).round().long().tolist()


def crop_tokens(style_encoder, crops):
    batch = torch.cat(crops)                                 # (n, 1, n_mels, ref_frames)
    return style_encoder.from_reference(batch).mean(0, keepdim=True)    # (1, M, D)


class LatentDiffusion(nn.Module):
    """U-Net + style encoder + noise schedule; forward returns the training loss (one
    forward for DDP); sampling uses .unet, .style and .sched with diffusion.py.

    paired (c.paired): the U-Net also sees the source latent as extra input channels, so it
    learns p(z_target | z_source, style) from the built-in data's pairs (the same piece in
    another style, the source sent through the recording chain); like Palette (Saharia et
    al. 2022) and InstructPix2Pix (Brooks et al. 2023). Without pairs (a user's folders)
    it is the paper's model, p(z | style), and transfer goes through inversion or SDEdit."""

    def __init__(self, unet_model, style, c):
        super().__init__()
        self.unet, self.style, self.c = unet_model, style, c
        self.paired = c.paired
        self.sched = diffusion.make_schedule(c.schedule, c.timesteps)

    def forward(self, z0, labels, ref_spec, z_src=None):
        B, c = len(z0), self.c
        from_label, from_ref = self.style.from_labels(labels), self.style.from_reference(ref_spec)
        use_ref = (torch.rand(B, device=z0.device) < c.ref_prob)[:, None, None]
        context = torch.where(use_ref, from_ref, from_label)
        drop = (torch.rand(B, device=z0.device) < c.cond_drop)[:, None, None]
        context = torch.where(drop, self.style.null_context(B), context)
        if self.paired:                     # the source, dropped now and then (zeros)
            keep = (torch.rand(B, device=z0.device) >= c.source_drop)[:, None, None, None]
            z_src = z_src * keep

        def model(x_t, t, ctx):
            return self.unet(torch.cat([x_t, z_src.to(x_t)], 1) if self.paired else x_t, t, ctx)
        loss = diffusion.training_loss(self.sched, model, z0, context, c.prediction)
        # One token space: a clip of a style should name it as its label does.
        align = (from_ref - from_label.detach()).pow(2).mean()
        return loss + c.align_weight * align


def build_ldm(c, n_styles, n_mels, latent_channels=4, guidance_input=False):
    return LatentDiffusion(
        UNet(latent_channels * (2 if c.paired else 1), c.model_channels, c.channel_mult,
             c.attention, c.num_res_blocks, c.context_dim, c.heads, c.dim_head,
             out_channels=latent_channels, guidance_input=guidance_input),
        StyleEncoder(n_styles, n_mels, c.tokens, c.context_dim), c)


def from_checkpoint(ckpt, guidance_input=False):
    """The LatentDiffusion of a loaded ldm.pt (config.load_checkpoint). guidance_input:
    its U-Net gets a guidance input at zero (the start of distill.py's student)."""
    ckpt["config"]["ldm"].setdefault("paired", False)     # made before paired training
    cfg = config.config_from_dict(ckpt["config"])
    model = build_ldm(cfg.ldm, len(ckpt["styles"]), cfg.audio.n_mels,
                      guidance_input=guidance_input)
    if not guidance_input:
        return config.load_weights(model, ckpt, "ldm")
    model, missing = config.load_weights(model, ckpt, "ldm", grow=True)
    assert all(k.startswith("unet.guidance_embed") for k in missing), missing
    return model


def load_widened(model, ckpt):
    """Start a paired model from an unpaired checkpoint's weights: the input convolution's
    new source channels start at zero, so the first step computes what the checkpoint
    did (InstructPix2Pix's initialisation). Returns the names it did not find."""
    state = dict(ckpt["model"])
    key = "unet.input_conv.weight"
    new = model.state_dict()[key]
    if key in state and state[key].shape != new.shape:
        old = state[key]
        state[key] = torch.zeros_like(new)
        state[key][:, :old.shape[1]] = old
    return config.load_weights(model, dict(model=state), "ldm", grow=True)[1]
