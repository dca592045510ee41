"""WaveNet (van den Oord et al. 2016), the autoregressive baseline vocoder, and the pieces
both autoregressive vocoders share (wavernn.py imports them): mu-law classes, the
frame-rate conditioner, teacher-forced training on short windows and batched scoring.

Each sample is a class of 8-bit mu-law (Sec. 2.2: 256 classes, softmax, cross-entropy),
predicted from the samples before it by dilated causal convolutions with gated
activations, residual and skip connections (Sec. 2.1, 2.3, 2.4), and from the log-mel by
local conditioning (Sec. 2.5): features computed at frame rate, each sample reading the
frame whose centre is nearest. Sampling draws one sample at a time; each layer keeps a
queue of its last `dilation` inputs, so a sample costs one step of every layer instead of
a pass over the whole receptive field (Paine et al. 2016, "Fast Wavenet").

    spec (B, 1, n_mels, T) -conditioner-> c (B, T, D)
    previous samples (B, N) classes -embed-> (B, N, C) -layers(c at each sample's frame)->
        sum of skips (B, N, S) -head-> logits (B, 256, N)
    sampling: for t in 0..N-1: classes[t] ~ softmax(logits(classes[<t], c)), O(layers) each
"""
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import config
from stft import LogMel

KIND = "vocoder"
MU = 255                 # 8-bit mu-law: MU + 1 = 256 classes
SCORE_SECONDS = None     # score whole test clips (72 x 12 s: ~9 min of WaveNet sampling on
                         # one CPU thread); a number scores the first that many seconds of each


# ---------------------------------------------------------------- shared by both vocoders
def mu_law_encode(wave, mu=MU):
    """Wave in [-1, 1] -> classes 0..mu: f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)
    (WaveNet eq. 1), quantised uniformly in f."""
    x = wave.clamp(-1, 1)
    f = torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(torch.tensor(float(mu)))
    return torch.round((f + 1) / 2 * mu).long()


def mu_law_decode(classes, mu=MU):
    """Classes 0..mu -> wave: the inverse of f at each class's level."""
    f = 2 * classes.float() / mu - 1
    return torch.sign(f) * ((1 + mu) ** f.abs() - 1) / mu


def frame_index(start, length, hop, frames):
    """For samples start .. start + length - 1, the frame whose centre is nearest (frame t of
    stft.LogMel is centred on sample t * hop): a nearest-neighbour upsampling by hop."""
    n = torch.arange(start, start + length)
    return torch.div(n + hop // 2, hop, rounding_mode="floor").clamp(max=frames - 1)


class FrameConditioner(nn.Module):
    """Normalised log-mel (B, 1, n_mels, T) -> conditioning features (B, T, D), at frame rate.
    Two convolutions over 5 frames each, so a sample also hears the frames around its own."""

    def __init__(self, n_mels, dim):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(n_mels, dim, 5, padding=2), nn.Tanh(),
                                 nn.Conv1d(dim, dim, 5, padding=2), nn.Tanh())

    def forward(self, spec):
        return self.net(spec[:, 0]).transpose(1, 2)                        # (B, T, D)


def sample_class(logits, generator=None):
    """One class per row of logits (B, classes), drawn from their softmax."""
    return torch.multinomial(F.softmax(logits.float(), dim=-1), 1, generator=generator)[:, 0]


def silence(batch, device=None):
    """The class of 0.0, which starts every sequence (the 'previous sample' of sample 0)."""
    return mu_law_encode(torch.zeros(batch, device=device))


# ---------------------------------------------------------------- WaveNet
def delay(x, d):
    """x (B, N, C) -> x[t - d] (B, N, C), zeros before the start: the causal shift."""
    return F.pad(x, (0, 0, d, 0))[:, :x.shape[1]]


class ResidualLayer(nn.Module):
    """One dilated layer with gated activation and local conditioning (WaveNet eq. 2-3):
        z = tanh(W_f * x + V_f c) . sigmoid(W_g * x + V_g c),
    where the causal convolution of kernel 2 and dilation d is W * x [t] = W_past x[t - d] +
    W_now x[t]. Returns (x + residual(z), skip(z)). Channels last: the same code runs on a
    whole sequence (B, N, C) in training and on one sample (B, C) in sampling."""

    def __init__(self, channels, skip_channels, cond_dim, dilation):
        super().__init__()
        self.dilation = dilation
        self.past = nn.Linear(channels, 2 * channels, bias=False)
        self.now = nn.Linear(channels, 2 * channels)
        self.cond = nn.Linear(cond_dim, 2 * channels, bias=False)     # V_f, V_g
        self.res = nn.Linear(channels, channels)
        self.skip = nn.Linear(channels, skip_channels)

    def forward(self, x, x_past, c):
        """x, x_past: this layer's input now and d samples ago; c: self.cond(features)."""
        filt, gate = (self.past(x_past) + self.now(x) + c).chunk(2, dim=-1)
        z = torch.tanh(filt) * torch.sigmoid(gate)
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """Dilations 1, 2, ..., 2 ** (layers_per_cycle - 1), repeated `cycles` times; receptive
    field 1 + cycles (2 ** layers_per_cycle - 1) samples. hop is the log-mel's."""

    def __init__(self, n_mels, hop, channels=32, skip_channels=64, cond_dim=64, cycles=2,
                 layers_per_cycle=8):
        super().__init__()
        self.hop, self.n_mels, self.channels = hop, n_mels, channels
        self.conditioner = FrameConditioner(n_mels, cond_dim)
        self.embed = nn.Embedding(MU + 1, channels)            # one-hot input x 1x1 conv
        self.layers = nn.ModuleList([ResidualLayer(channels, skip_channels, cond_dim, 2 ** i)
                                     for _ in range(cycles) for i in range(layers_per_cycle)])
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(skip_channels, skip_channels), nn.ReLU(),
                                  nn.Linear(skip_channels, MU + 1))

    def receptive_field(self):
        return 1 + sum(layer.dilation for layer in self.layers)

    def forward(self, prev, spec, start=0):
        """Teacher forcing: prev (B, N) are the classes of samples start - 1 .. start + N - 2;
        returns logits (B, 256, N) for samples start .. start + N - 1."""
        cond = self.conditioner(spec)                                       # (B, T, D)
        frames = frame_index(start, prev.shape[1], self.hop, cond.shape[1])
        x, skips = self.embed(prev), 0                                      # (B, N, C)
        for layer in self.layers:
            x, skip = layer(x, delay(x, layer.dilation), layer.cond(cond)[:, frames])
            skips = skips + skip                                            # (B, N, S)
        return self.head(skips).transpose(1, 2)                             # (B, 256, N)

    @torch.no_grad()
    def generate(self, spec, length, generator=None, keep_logits=False, progress=None):
        """Ancestral sampling of `length` samples under spec (B, 1, n_mels, T): classes
        (B, length), and the logits of every step (B, 256, length) if keep_logits."""
        B = spec.shape[0]
        cond = self.conditioner(spec)                                       # (B, T, D)
        frames = frame_index(0, length, self.hop, cond.shape[1]).tolist()
        # Each layer's conditioning per frame, (T, B, 2C); and its queue of inputs, (d, B, C):
        # slot t % d holds the input of step t - d until step t reads and replaces it.
        layer_cond = [layer.cond(cond).transpose(0, 1).contiguous() for layer in self.layers]
        queues = [spec.new_zeros(layer.dilation, B, self.channels) for layer in self.layers]

        def step(t, prev):
            x, skips = self.embed(prev), 0                                  # (B, C)
            for layer, queue, c in zip(self.layers, queues, layer_cond):
                slot = t % layer.dilation
                x_next, skip = layer(x, queue[slot], c[frames[t]])
                queue[slot] = x
                x, skips = x_next, skips + skip
            return self.head(skips)                                         # (B, 256)
        return sample_loop(step, B, length, spec.device, generator, keep_logits, progress)


def sample_loop(step, batch, length, device, generator=None, keep_logits=False,
                progress=None):
    """Ancestral sampling, one sample at a time: step(t, previous classes (B,)) -> logits
    (B, 256) of sample t (the model keeps its own state). Returns classes (B, length), and
    the logits of every step (B, 256, length) if keep_logits."""
    prev, out, logits_kept = silence(batch, device), [], []
    for t in (progress(range(length)) if progress else range(length)):
        logits = step(t, prev)
        prev = sample_class(logits, generator)
        out.append(prev)
        if keep_logits:
            logits_kept.append(logits)
    classes = torch.stack(out, dim=1)                                       # (B, length)
    return (classes, torch.stack(logits_kept, dim=2)) if keep_logits else classes


def build(cfg):
    c = cfg.wavenet
    return WaveNet(cfg.audio.n_mels, cfg.audio.hop, c.channels, c.skip_channels, c.cond_dim,
                   c.cycles, c.layers_per_cycle)


# ---------------------------------------------------------------- training (both vocoders)
def window_loss(model, wave, spec, window):
    """Teacher-forced cross-entropy (nats per sample) on a random window of each clip.

    The clip (B, N) is longer than the window, so that the window's log-mel frames see real
    audio on both sides, as they do in a whole piece; one start for the whole batch."""
    classes = mu_law_encode(wave)                                           # (B, N)
    start = int(torch.randint(1, wave.shape[1] - window + 1, ()))
    prev = classes[:, start - 1:start + window - 1]
    logits = model(prev, spec, start)                                       # (B, 256, window)
    return F.cross_entropy(logits, classes[:, start:start + window])


def train_vocoder(name, build_model, c, args, cfg, kit):
    """Train an autoregressive vocoder with the shared loop; weights in
    CKPT_DIR/baselines/<name>.pt (fp16), with the config, the styles and the data root."""
    rank, world, device = kit.setup_distributed(args.device)
    train_set, val_set = kit.audio_splits(args, cfg, c.clip_seconds, c.clip_seconds, rank)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    window = int(c.window_seconds * cfg.audio.sample_rate)
    keep = range(0, len(val_set), max(1, len(val_set) // 32))             # 32 clips, all styles
    val_waves = torch.stack([val_set[i][0] for i in keep]).to(device)
    val_specs = logmel(val_waves)
    torch.manual_seed(args.seed)
    model = build_model(cfg).to(device)

    def loss_fn(net, batch, step):
        wave, _ = batch
        return window_loss(net, wave, logmel(wave), window)

    @torch.no_grad()
    def validate(ema):                      # fixed windows: comparable over time
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return {"val_nll": window_loss(ema, val_waves, val_specs, window).item()}

    def extra(ema):
        return dict(config=config.config_to_dict(cfg), styles=train_set.styles)

    ema = kit.train_loop(model, loss_fn, train_set, c, kit.options(args), f"baselines/{name}", validate,
                         extra)
    if rank == 0:
        n = sum(p.numel() for p in ema.parameters())
        print(f"{name}: {n} parameters, validation cross-entropy "
              f"{validate(ema)['val_nll']:.3f} nats per sample")


def train(args, cfg, kit):
    train_vocoder("wavenet", build, cfg.wavenet, args, cfg, kit)


# ---------------------------------------------------------------- scoring (both vocoders)
def vocode_batch(model, waves, logmel, length, generator=None, progress=None):
    """Resynthesise the first `length` samples of each wave (N_i,) from the log-mel of the
    whole wave (cut to the shortest), all in one batch: (list of waves (length,), seconds)."""
    t0 = time.perf_counter()
    shortest = min(len(w) for w in waves)
    spec = logmel(torch.stack([w[:shortest] for w in waves]))             # (B, 1, n_mels, T)
    classes = model.generate(spec, length, generator, progress=progress)  # (B, length)
    return list(mu_law_decode(classes)), time.perf_counter() - t0


def vocoder_systems(title, name, from_checkpoint, ckpt_dir, cfg, logmel, waves,
                    seconds=SCORE_SECONDS):
    """The resynthesis row of an autoregressive vocoder, or {} if it is not trained.

    Sampling runs one sample at a time in Python, so the row batches: its first call
    vocodes every clip of `waves` ({(piece, style): wave}, the clips the eval will ask for;
    only the first `seconds` of each, if given) together and caches the results. Every
    output reports its share of that compute, so the RTF is the true cost per clip at this
    batch size; one clip alone costs nearly as much as the whole batch. A call whose wave is
    not the cached clip (other data) is vocoded alone."""
    path = Path(ckpt_dir) / "baselines" / f"{name}.pt"
    if not path.is_file():
        return {}
    ckpt = config.load_checkpoint(path, "baselines")
    model = from_checkpoint(ckpt)
    if (model.hop, model.n_mels) != (logmel.hop, logmel.mel_fb.shape[0]):
        raise ValueError(f"{path} was trained on another log-mel (hop, mels); retrain it with "
                         f"`python train.py --stage baselines --baseline {name}`")
    sample_rate = config.config_from_dict(ckpt["config"]).audio.sample_rate
    length = int(seconds * sample_rate) if seconds else None
    cache = {}

    def resynthesise(wave, src, tgt, piece):
        if not cache:
            keys = list(waves)
            n = min(len(w) for w in waves.values())
            n = min(n, length or n)
            outs, seconds_all = vocode_batch(
                model, [waves[k] for k in keys], logmel, n, torch.Generator().manual_seed(0),
                lambda it: tqdm(it, desc=f"{title} sampling", unit="sample", leave=False))
            cache.update({k: (waves[k][:n], out, seconds_all / len(keys))
                          for k, out in zip(keys, outs)})
        truth, out, share = cache.get((piece, src), (None, None, None))
        if truth is None or not torch.equal(truth, wave[:len(truth)]):
            (out,), share = vocode_batch(model, [wave], logmel, min(len(wave), length or len(wave)),
                                         torch.Generator().manual_seed(0))
        return out, share

    part = f" (first {seconds:g} s)" if seconds else ""
    return {f"{title}{part}, all test clips in one batch (ground-truth log-mel, baseline)":
            resynthesise}


def from_checkpoint(ckpt):
    """The WaveNet of a loaded baselines/wavenet.pt (config.load_checkpoint), in fp32."""
    model = build(config.config_from_dict(ckpt["config"]))
    return config.load_weights(model, ckpt, "baselines").float()


def systems(ckpt_dir, cfg, logmel, styles, waves):
    return vocoder_systems("WaveNet", "wavenet", from_checkpoint, ckpt_dir, cfg, logmel, waves)
