"""The judge and the measures: the style classifier and every metric the evaluation reports.

The paper scores transfer by style accuracy, Frechet Audio Distance and listening tests.
The built-in dataset is paired (every test piece exists in every style) and its score is
known, so here an output is also measured against the ground-truth rendering in the target
style and against the notes of the piece.

    StyleClassifier: spec (B, 1, n_mels, T) -> logits (B, n_styles), embedding (B, emb_dim)
    per-item metrics: waves (B, N) or specs (B, 1, n_mels, T) -> (B,)
    set metrics (FAD-C, KID): embeddings (N, D) x (M, D) -> one number
    score_system(system, split, judge) -> {metric: value}, over every ordered style pair
"""
import contextlib
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from stft import mrstft_distance, stft


# ---------------------------------------------------------------- the style classifier
class StyleClassifier(nn.Module):
    """A small CNN on normalised log-mel with a pooled embedding (used for accuracy, FAD-C)."""

    def __init__(self, n_styles, channels=(16, 32, 64, 128), emb_dim=128):
        super().__init__()
        blocks, c_in = [], 1
        for c in channels:               # each block halves frequency and time
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.GroupNorm(8, c), nn.SiLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.proj = nn.Linear(2 * c_in, emb_dim)
        self.head = nn.Linear(emb_dim, n_styles)

    def embed(self, spec):
        h = self.features(spec)                                   # (B, C, F/16, T/16)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return F.silu(self.proj(pooled))                          # (B, emb_dim)

    def forward(self, spec):
        return self.head(self.embed(spec))                        # (B, n_styles)


def classifier_from_checkpoint(ckpt):
    """The StyleClassifier of a loaded classifier.pt (config.load_checkpoint)."""
    c = config.config_from_dict(ckpt["config"]).classifier
    model = StyleClassifier(len(ckpt["styles"]), c.channels, c.emb_dim)
    return config.load_weights(model, ckpt, "classifier")


@torch.no_grad()
def window_embeddings(classifier, logmel, wave, window):
    """Classifier embeddings (n, D) of a wave (N,) cut into n whole windows (one if short)."""
    n = max(1, wave.shape[-1] // window)
    chunks = wave[:n * window].reshape(n, -1) if wave.shape[-1] >= window else wave[None]
    return classifier.embed(logmel(chunks)).numpy()


# ---------------------------------------------------------------- distances between sets
def frechet_distance(emb_a, emb_b, eps=1e-6):
    """|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between two sets of embeddings.

    Heusel et al. 2017 (FID); with classifier embeddings this is FAD-C. emb: (N, D). It is
    biased at small N (Binkowski et al. 2018): compare values at the same N and D only.
    """
    import scipy.linalg                  # here: transfer.py imports this module, not FAD
    a, b = (np.asarray(e, dtype=np.float64) for e in (emb_a, emb_b))
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (np.atleast_2d(np.cov(e, rowvar=False)) for e in (a, b))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():   # singular product: nudge both covariances
        offset = eps * np.eye(len(mu_a))
        covmean = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = covmean.real               # tiny imaginary parts are numerical noise
    diff = mu_a - mu_b
    return float(max(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean),
                     0.0))


def kernel_inception_distance(emb_a, emb_b):
    """KID (Binkowski et al. 2018, eq. 2): the unbiased estimate of the squared MMD with the
    kernel k(x, y) = (x . y / D + 1) ** 3. Unbiased at any N, so it can be negative when the
    two sets are alike; emb: (N, D) and (M, D), N, M >= 2."""
    a, b = (np.asarray(e, dtype=np.float64) for e in (emb_a, emb_b))
    n, m, d = len(a), len(b), a.shape[1]
    k_aa, k_bb, k_ab = ((x @ y.T / d + 1) ** 3 for x, y in ((a, a), (b, b), (a, b)))
    return float((k_aa.sum() - np.trace(k_aa)) / (n * (n - 1))
                 + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1)) - 2 * k_ab.mean())


def pca_basis(emb, dims):
    """(mean (D,), components (D, dims)): the top principal directions of a set (N, D), so
    that Frechet distances over few items are taken where their covariance has full rank."""
    emb = np.asarray(emb, dtype=np.float64)
    mean = emb.mean(0)
    _, _, vt = np.linalg.svd(emb - mean, full_matrices=False)
    return mean, vt[:dims].T


# ---------------------------------------------------------------- content: chroma and notes
def chroma_filterbank(sample_rate, n_fft, fmin=110.0, fmax=4000.0):
    """(12, n_fft//2+1): each FFT bin in [fmin, fmax] goes to its nearest pitch class.

    pitch = 69 + 12 log2(f / 440) (MIDI numbers, A4 = 440 Hz); class 0 is C.
    """
    freqs = torch.arange(n_fft // 2 + 1) * sample_rate / n_fft
    fb = torch.zeros(12, len(freqs))
    keep = (freqs >= fmin) & (freqs <= fmax)
    pitch_class = torch.round(69 + 12 * torch.log2(freqs[keep] / 440.0)).long() % 12
    fb[pitch_class, keep.nonzero().squeeze(1)] = 1.0
    return fb


CHROMA_FFT, CHROMA_HOP = 4096, 1024


def chroma(wave, sample_rate, n_fft=CHROMA_FFT, hop=CHROMA_HOP):
    """Wave (B, N) -> frame-normalised 12-bin chroma (B, 12, T) from the STFT energy; frame
    t is centred on sample t * hop."""
    power = stft(wave, n_fft, hop).abs() ** 2                     # (B, F, T)
    c = chroma_filterbank(sample_rate, n_fft).to(power) @ power   # (B, 12, T)
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-8)


def crop_pair(x, y):
    n = min(x.shape[-1], y.shape[-1])
    return x[..., :n], y[..., :n]


def frame_cosine(ca, cb):
    """Mean over frames where both have energy of the cosine of (B, 12, T) chroma -> (B,)."""
    ca, cb = crop_pair(ca, cb)
    voiced = (ca.sum(1) > 0) & (cb.sum(1) > 0)                    # skip silent frames
    cos = (ca * cb).sum(1) / (ca.norm(dim=1) * cb.norm(dim=1)).clamp_min(1e-8)  # (B, T)
    return (cos * voiced).sum(-1) / voiced.sum(-1).clamp_min(1)


def content_similarity(wave_a, wave_b, sample_rate):
    """Mean frame-wise cosine of chroma (B,): 1 = same notes, whatever the instruments."""
    wave_a, wave_b = crop_pair(wave_a, wave_b)
    return frame_cosine(chroma(wave_a, sample_rate), chroma(wave_b, sample_rate))


def pitch_class_roll(events, frames, sample_rate, hop=CHROMA_HOP):
    """The score as chroma would see it: (12, frames), 1 where a note of that pitch class
    sounds at the frame's centre (t hop / sample_rate seconds). events: the piece's note
    events from metadata.json, dicts with pitch (MIDI), start and end (seconds); drum
    events (no pitch class) are skipped."""
    roll = torch.zeros(12, frames)
    centre = torch.arange(frames) * hop / sample_rate
    for e in events:
        if e.get("role") == "drums":
            continue
        on = (centre >= e["start"]) & (centre < e["end"])
        roll[int(e["pitch"]) % 12, on] = 1.0
    return roll


def notes_kept(wave, roll, sample_rate):
    """Mean frame-wise cosine (B,) of the chroma of wave (B, N) against the score's
    pitch-class roll (12, T): how much of what sounds are the piece's notes, whatever the
    instruments. The oracle render's value is the ceiling for this dataset."""
    return frame_cosine(chroma(wave, sample_rate), roll.expand(len(wave), -1, -1).to(wave))


# ---------------------------------------------------------------- spectral distances
def logmel_l1(spec_a, spec_b):
    """Mean absolute difference of normalised log-mel (B,)."""
    spec_a, spec_b = crop_pair(spec_a, spec_b)
    return (spec_a - spec_b).abs().mean(dim=(1, 2, 3))


def log_spectral_distance(wave_ref, wave_est, n_fft=1024, hop=256, eps=1e-10):
    """LSD in dB (B,): per frame sqrt(mean_f (10 log10 P_ref - 10 log10 P_est)^2), averaged."""
    wave_ref, wave_est = crop_pair(wave_ref, wave_est)
    db = [10 * torch.log10(stft(w, n_fft, hop).abs().pow(2).clamp_min(eps))
          for w in (wave_ref, wave_est)]
    return (db[0] - db[1]).pow(2).mean(dim=-2).sqrt().mean(dim=-1)


# ---------------------------------------------------------------- speed
def real_time_factor(fn, audio_seconds, repeats=5, warmup=1):
    """Median compute seconds per second of audio over `repeats` calls, after a warm-up."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / audio_seconds


def matmul_gflops(n=1024, dtype=torch.float32, device="cpu", repeats=10):
    """This machine's dense matmul throughput (GFLOP/s), printed beside every speed figure;
    fewer repeats where one call takes long (bf16 on a CPU without bf16 instructions)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    t0 = time.perf_counter()
    a @ b
    seconds = time.perf_counter() - t0
    if seconds < 0.5:                       # else one call is measure enough
        seconds = real_time_factor(lambda: a @ b, 1.0, repeats=repeats, warmup=1)
    return 2 * n ** 3 / seconds / 1e9


def bf16_pays(device="cpu", n=256):
    """Whether bfloat16 matmuls run faster than float32 ones here. A CPU with AMX or
    AVX512-BF16 runs them up to ~8x faster; one without (AVX2 only) emulates them, hundreds
    of times slower (0.25 GFLOP/s against 75 on a 2-core AVX2 EPYC), so bf16 autocast must
    not be on by default everywhere. A first look at a small size, each dtype's second call
    (the first compiles oneDNN's kernels: 2 ms on AMX, 10x an fp32 call), rules emulation
    out cheaply; then the throughputs at n decide. Some 5 ms where bf16 is fast."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    a = torch.randn(64, 64, device=device)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x                               # the kernels' compilation
        t0 = time.perf_counter()
        x @ x
        seconds[dtype] = time.perf_counter() - t0
    if seconds[torch.bfloat16] > 4 * seconds[torch.float32] + 1e-4:
        return False                        # emulated: no need to look closer
    return matmul_gflops(n, torch.bfloat16, device, 5) > matmul_gflops(n, device=device,
                                                                      repeats=5)


def flop_counter():
    """torch's FlopCounterMode (it counts matmuls and convolutions, the work that matters
    here), taught the CPU's fused attention kernel, which it does not know."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa})


class Stopwatch:
    """Compute seconds per pipeline stage (and FLOPs, given a running
    torch.utils.flop_counter.FlopCounterMode), for the speed table in train.py:
    `with stopwatch("decoder"): ...` adds to .seconds["decoder"] and .flops["decoder"]."""

    def __init__(self, device="cpu", flop_counter=None):
        self.seconds, self.flops, self.counter = {}, {}, flop_counter
        self.cuda = torch.device(device).type == "cuda"

    @contextlib.contextmanager
    def __call__(self, stage):
        flops = self.counter.get_total_flops() if self.counter else 0
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        if self.counter:
            self.flops[stage] = self.flops.get(stage, 0) + self.counter.get_total_flops() - flops


def no_stopwatch(stage):
    return contextlib.nullcontext()


# ---------------------------------------------------------------- scoring a system on a split
FAD_DIMS = 16            # FAD-C in the top principal directions of the train split's embeddings
WINDOW_SECONDS = 4.0     # the classifier's clip: outputs are judged in windows of this length


@dataclass
class Judge:
    """What scoring needs besides the system: the style classifier and its log-mel, the
    score of every piece (note events), and the PCA basis FAD-C is taken in."""
    classifier: torch.nn.Module
    logmel: torch.nn.Module
    sample_rate: int
    scores: dict                    # piece id -> note events (metadata.json)
    basis: tuple = None             # (mean, components), pca_basis

    def embed(self, wave):
        return window_embeddings(self.classifier, self.logmel, wave,
                                 int(WINDOW_SECONDS * self.sample_rate))


@dataclass
class Split:
    """A paired split: {(piece, style): wave (N,)}, its styles and name."""
    waves: dict
    styles: list
    name: str

    @property
    def pieces(self):
        return sorted({p for p, _ in self.waves})


def set_distances(emb_out, emb_ref, basis):
    """(FAD-C in the PCA basis, KID) between two sets of embeddings of equal size."""
    mean, components = basis
    return (frechet_distance((emb_out - mean) @ components, (emb_ref - mean) @ components),
            kernel_inception_distance(emb_out, emb_ref))


@torch.no_grad()
def score_system(system, split, judge, resynthesis=False):
    """Score `system` on every piece of the split and every ordered pair of distinct styles
    (resynthesis: every style to itself, no content-vs-source column). A system with a
    .pairs attribute (a set of (source, target)) is scored on those pairs only.

    Per output: style accuracy, chroma against the target's ground truth and the source,
    notes kept (chroma against the score), spectral distances. Per style pair: FAD-C and
    KID between the outputs' window embeddings and the target's ground truth in the same
    pieces: the same number of distinct embeddings on both sides; then averaged over pairs.
    by_target: style accuracy and notes kept of the outputs into each target style."""
    stats = {k: [] for k in ("correct", "content_target", "content_source", "notes_kept",
                             "logmel_l1", "mrstft", "lsd")}
    sets, compute, audio_seconds, targets = {}, 0.0, 0.0, []
    pairs, sr = getattr(system, "pairs", None), judge.sample_rate
    for piece in split.pieces:
        for src in split.styles:
            for tgt in ([src] if resynthesis else [t for t in split.styles if t != src]):
                if pairs is not None and (src, tgt) not in pairs:
                    continue
                t0 = time.perf_counter()
                out = system(split.waves[piece, src], src, tgt, piece)
                seconds = time.perf_counter() - t0
                if isinstance(out, tuple):      # a system that shares work between calls
                    out, seconds = out          # reports each output's share of it
                compute += seconds
                targets.append(tgt)
                out, ref = crop_pair(out[None].float(), split.waves[piece, tgt][None])
                source = split.waves[piece, src][None]
                spec_out = judge.logmel(out)
                label = judge.classifier(spec_out).argmax(-1).item()
                stats["correct"].append(float(label == split.styles.index(tgt)))
                emb = sets.setdefault((src, tgt), ([], []))
                emb[0].append(judge.embed(out[0]))
                emb[1].append(judge.embed(ref[0]))
                stats["content_target"].append(content_similarity(out, ref, sr).item())
                stats["content_source"].append(content_similarity(out, source, sr).item())
                roll = pitch_class_roll(judge.scores[piece], chroma(out, sr).shape[-1], sr)
                stats["notes_kept"].append(notes_kept(out, roll, sr).item())
                stats["logmel_l1"].append(logmel_l1(spec_out, judge.logmel(ref)).item())
                stats["mrstft"].append(mrstft_distance(ref, out).item())
                stats["lsd"].append(log_spectral_distance(ref, out).item())
                audio_seconds += ref.shape[-1] / sr
    result = {k: float(np.mean(v)) for k, v in stats.items()}
    result["style_accuracy"] = 100 * result.pop("correct")
    by_target = {t: [i for i, x in enumerate(targets) if x == t] for t in split.styles}
    result["by_target"] = {t: dict(style_accuracy=100 * float(np.mean([stats["correct"][i]
                                                                      for i in idx])),
                                   notes_kept=float(np.mean([stats["notes_kept"][i]
                                                             for i in idx])))
                           for t, idx in by_target.items() if idx}
    if resynthesis:
        result.pop("content_source")
    fad, kid = zip(*(set_distances(np.concatenate(o), np.concatenate(r), judge.basis)
                     for o, r in sets.values()))
    result.update(fad_c=float(np.mean(fad)), kid=float(np.mean(kid)),
                  set_size=len(np.concatenate(next(iter(sets.values()))[0])),
                  rtf=compute / audio_seconds, outputs=len(stats["lsd"]))
    return result


def fad_basis_and_floor(test, train, judge):
    """The PCA basis of FAD-C (fitted on the train split's ground truth, all styles) and the
    floor: FAD-C and KID between the test and train ground truth of each style, as many
    pieces on both sides, averaged over styles: what two honest samples of a style score."""
    emb = {k: judge.embed(w) for k, w in train.waves.items()}
    judge.basis = pca_basis(np.concatenate(list(emb.values())), FAD_DIMS)
    fad, kid = zip(*(set_distances(
        np.concatenate([judge.embed(w) for (_, s), w in test.waves.items() if s == style]),
        np.concatenate([e for (_, s), e in emb.items() if s == style]), judge.basis)
        for style in test.styles))
    return dict(fad_c=float(np.mean(fad)), kid=float(np.mean(kid)), dims=FAD_DIMS)
