"""Evaluation: the style classifier, the metrics, and the results tables.

The paper scores transfer by style accuracy, Frechet Audio Distance and listening tests.
The built-in dataset is paired (every test piece exists in every style), so here a transfer
"piece P, style S -> T" is also scored against its ground truth, the rendering of P in T.

    StyleClassifier: spec (B, 1, n_mels, T) -> logits (B, n_styles), embedding (B, emb_dim)
    metrics: pure functions on tensors -> one number per item (or per set, for FAD-C)
    score_system: system(source wave, source style, target style, piece) -> wave, scored
                  over all ordered pairs of distinct styles
"""
import math
import statistics
import time

import numpy as np
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

import config
from stft import griffin_lim, mrstft_distance, stft


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


# ---------------------------------------------------------------- metrics
def classifier_from_checkpoint(ckpt):
    """The StyleClassifier of a loaded classifier.pt (config.load_checkpoint)."""
    c = config.config_from_dict(ckpt["config"]).classifier
    model = StyleClassifier(len(ckpt["styles"]), c.channels, c.emb_dim)
    return config.load_weights(model, ckpt, "classifier")


def style_accuracy(logits, target):
    """Fraction of items whose predicted style is the target style."""
    return (logits.argmax(dim=-1) == target).float().mean().item()


def frechet_distance(emb_a, emb_b, eps=1e-6):
    """|mu_a - mu_b|^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between two sets of embeddings.

    Heusel et al. 2017 (FID); with classifier embeddings this is FAD-C. emb: (N, D).
    """
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


def chroma(wave, sample_rate, n_fft=4096, hop=1024):
    """Wave (B, N) -> frame-normalised 12-bin chroma (B, 12, T) from the STFT energy."""
    power = stft(wave, n_fft, hop).abs() ** 2                     # (B, F, T)
    c = chroma_filterbank(sample_rate, n_fft).to(power) @ power   # (B, 12, T)
    return c / c.norm(dim=1, keepdim=True).clamp_min(1e-8)


def _crop(x, y):
    n = min(x.shape[-1], y.shape[-1])
    return x[..., :n], y[..., :n]


def content_similarity(wave_a, wave_b, sample_rate):
    """Mean frame-wise cosine of chroma (B,): 1 = same notes, whatever the instruments."""
    wave_a, wave_b = _crop(wave_a, wave_b)
    ca, cb = chroma(wave_a, sample_rate), chroma(wave_b, sample_rate)
    voiced = (ca.sum(1) > 0) & (cb.sum(1) > 0)                    # skip silent frames
    cos = (ca * cb).sum(1)                                        # (B, T)
    return (cos * voiced).sum(-1) / voiced.sum(-1).clamp_min(1)


def logmel_l1(spec_a, spec_b):
    """Mean absolute difference of normalised log-mel (B,)."""
    spec_a, spec_b = _crop(spec_a, spec_b)
    return (spec_a - spec_b).abs().mean(dim=(1, 2, 3))


def log_spectral_distance(wave_ref, wave_est, n_fft=1024, hop=256, eps=1e-10):
    """LSD in dB (B,): per frame sqrt(mean_f (10 log10 P_ref - 10 log10 P_est)^2), averaged."""
    wave_ref, wave_est = _crop(wave_ref, wave_est)
    db = [10 * torch.log10(stft(w, n_fft, hop).abs().pow(2).clamp_min(eps))
          for w in (wave_ref, wave_est)]
    return (db[0] - db[1]).pow(2).mean(dim=-2).sqrt().mean(dim=-1)


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
    """This machine's dense matmul throughput (GFLOP/s), printed beside every speed figure."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    seconds = real_time_factor(lambda: a @ b, 1.0, repeats=repeats, warmup=2)
    return 2 * n ** 3 / seconds / 1e9


def flop_counter():
    """torch's FlopCounterMode (it counts matmuls and convolutions, the work that matters
    here), taught the CPU's fused attention kernel, which it does not know."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: sdpa})


# ---------------------------------------------------------------- scoring a system
@torch.no_grad()
def window_embeddings(classifier, logmel, wave, window):
    """Classifier embeddings (n, D) of a wave (N,) cut into n whole windows (one if short)."""
    n = max(1, wave.shape[-1] // window)
    chunks = wave[:n * window].reshape(n, -1) if wave.shape[-1] >= window else wave[None]
    return classifier.embed(logmel(chunks)).numpy()


def fad_floor(test_waves, train_waves, styles, classifier, logmel, sample_rate,
              window_seconds=4.0):
    """FAD-C between the test split's ground truth and other pieces of the train split, per
    style, averaged: what two honest samples of the same styles score (the noise floor
    against which a transfer's FAD-C is read)."""
    window = int(window_seconds * sample_rate)
    return float(np.mean([frechet_distance(
        np.concatenate([window_embeddings(classifier, logmel, w, window)
                        for (_, s), w in test_waves.items() if s == style]),
        np.concatenate([window_embeddings(classifier, logmel, w, window)
                        for (_, s), w in train_waves.items() if s == style]))
        for style in styles]))


@torch.no_grad()
def score_system(system, waves, styles, classifier, logmel, sample_rate, window_seconds=4.0,
                 resynthesis=False):
    """Score `system` over every test piece and every ordered pair of distinct styles.

    waves: {(piece, style): wave (N,)} ground-truth renderings (the paired test split).
    system(wave, source_style, target_style, piece) -> wave (N',), or (wave, seconds) when
    the system batches work over calls and reports each output's share of its compute.
    resynthesis=True scores a vocoder or round trip instead: one call per (piece, style)
    with source = target, and no content-vs-source column. A system with a .pairs
    attribute (a set of (source, target)) is scored on those pairs only (one-pair models).
    FAD-C is computed per target style (outputs for T against the ground truth in T, each
    clip cut into windows of the classifier's clip length) and averaged over styles: over
    all pairs, the identity's outputs would otherwise have exactly the targets' distribution.
    """
    pieces = sorted({p for p, _ in waves})
    stats = {k: [] for k in ("correct", "content_target", "content_source", "logmel_l1",
                             "mrstft", "lsd")}
    emb_out, emb_ref = {t: [] for t in styles}, {t: [] for t in styles}
    compute, audio_seconds, window = 0.0, 0.0, int(window_seconds * sample_rate)
    pairs = getattr(system, "pairs", None)
    for piece in pieces:
        for src in styles:
            for tgt in ([src] if resynthesis else [t for t in styles if t != src]):
                if pairs is not None and (src, tgt) not in pairs:
                    continue
                t0 = time.perf_counter()
                out = system(waves[piece, src], src, tgt, piece)
                seconds = time.perf_counter() - t0
                if isinstance(out, tuple):      # a system that shares work between calls
                    out, seconds = out          # reports each output's share of it
                compute += seconds
                out, ref = _crop(out[None].float(), waves[piece, tgt][None])
                source = waves[piece, src][None]
                spec_out, spec_ref = logmel(out), logmel(ref)
                label = classifier(spec_out).argmax(-1).item()
                stats["correct"].append(float(label == styles.index(tgt)))
                for x, bank in ((out, emb_out[tgt]), (ref, emb_ref[tgt])):
                    bank.append(window_embeddings(classifier, logmel, x[0], window))
                stats["content_target"].append(content_similarity(out, ref, sample_rate).item())
                stats["content_source"].append(
                    content_similarity(out, source, sample_rate).item())
                stats["logmel_l1"].append(logmel_l1(spec_out, spec_ref).item())
                stats["mrstft"].append(mrstft_distance(ref, out).item())
                stats["lsd"].append(log_spectral_distance(ref, out).item())
                audio_seconds += ref.shape[-1] / sample_rate
    result = {k: float(np.mean(v)) for k, v in stats.items()}
    result["style_accuracy"] = 100 * result.pop("correct")
    if resynthesis:
        result.pop("content_source")
    result["fad_c"] = float(np.mean([frechet_distance(np.concatenate(emb_out[t]),
                                                      np.concatenate(emb_ref[t]))
                                     for t in styles if emb_out[t]]))
    result["rtf"] = compute / audio_seconds
    result["pairs"] = len(stats["lsd"])
    return result


COLUMNS = [("style_accuracy", "style acc. (%) ↑", "{:.1f}"),
           ("content_target", "content vs target ↑", "{:.3f}"),
           ("content_source", "content vs source", "{:.3f}"),
           ("fad_c", "FAD-C ↓", "{:.2f}"),
           ("logmel_l1", "log-mel L1 ↓", "{:.3f}"),
           ("mrstft", "MR-STFT ↓", "{:.3f}"),
           ("lsd", "LSD (dB) ↓", "{:.2f}"),
           ("rtf", "RTF", "{:.4f}"),
           ("pairs", "outputs", "{:.0f}")]       # one-pair models score fewer


def results_table(rows):
    """Markdown table of {system: metrics} in COLUMNS order."""
    lines = ["| system | " + " | ".join(c[1] for c in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, m in rows.items():
        cells = [fmt.format(m[k]) if k in m and math.isfinite(m[k]) else "-"
                 for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reference_systems(waves, logmel, n_fft, hop):
    """The rows every later number is read against: transfer references (ground truth,
    identity, wrong piece) and resynthesis references (Griffin-Lim of the ground truth's
    log-mel); each is system(wave, source style, target style, piece) -> wave."""
    ids = sorted({p for p, _ in waves})
    generator = torch.Generator().manual_seed(0)

    def griffin_lim_resynthesis(wave, src, tgt, piece):
        target = waves[piece, tgt]
        magnitude = logmel.mel_to_magnitude(logmel(target[None]))
        return griffin_lim(magnitude, n_fft, hop, n_iter=64, length=len(target),
                           generator=generator)[0]

    return {
        "oracle (target-style ground truth)": lambda w, s, t, p: waves[p, t],
        "identity (source unchanged)": lambda w, s, t, p: w,
        "random target (other piece, target style)":
            lambda w, s, t, p: waves[ids[(ids.index(p) + 1) % len(ids)], t],
    }, {"Griffin-Lim, 64 it. (ground-truth log-mel)": griffin_lim_resynthesis}


def results_markdown(results):
    """RESULTS.md from results.json: the machine, the command, the tables, the legend."""
    if "test_set" not in results:           # only a sweep has been run
        return (f"# Results\n\n{speed_markdown(results)}{inversion_markdown(results)}"
                f"{sweep_markdown(results)}{METRICS_NOTE}\n")
    t = results["test_set"]
    floor = (f" FAD-C floor (the test ground truth against as many train-split pieces in "
             f"the same styles): {results['fad_floor']:.2f}." if "fad_floor" in results else "")
    reruns = "".join(f"Rows rescored by `{r['command']}` on {r['machine']}: "
                     f"{', '.join(r['rows'])}.\n\n" for r in results.get("reruns", []))
    return (f"# Results\n\nMade by `{results['command']}` on {results['machine']}.\n\n{reruns}"
            f"## Transfer\n\nTest split: {t['pieces']} held-out pieces x {len(t['styles'])} "
            f"styles ({', '.join(t['styles'])}), {t['seconds']:.0f} s each; every ordered "
            f"pair of distinct styles, scored against the ground-truth rendering of the piece "
            f"in the target style.{floor}\n\n{results_table(results['transfer'])}\n\n"
            f"## Resynthesis (vocoders and round trips)\n\nEach test piece in each style, "
            f"resynthesised from its own ground truth and scored against it.\n\n"
            f"{results_table(results['resynthesis'])}\n\n{speed_markdown(results)}"
            f"{inversion_markdown(results)}{sweep_markdown(results)}"
            f"{METRICS_NOTE}\n")


def sweep_markdown(results):
    """The LDM strength x guidance sweep (train.py --stage eval --sweep), if one was run."""
    if "sweep" not in results:
        return ""
    sw = results["sweep"]
    rows = {f"{r['mode']}, strength {r['strength']}, w = {r['guidance']}": r
            for r in sw["rows"]}
    return (f"## LDM sweep: strength x guidance\n\nMade by `{sw['command']}`: the first "
            f"{sw['seconds']:.0f} s of {sw['pieces']} test pieces, every ordered style pair, "
            f"{sw['rows'][0]['steps']} denoising steps, decoded through Griffin-Lim. The "
            f"identity row on the same clips: chroma vs target "
            f"{sw['identity']['content_target']:.3f}.\n\n{results_table(rows)}\n\n")


def inversion_markdown(results):
    """The inversion round trips (train.py --stage eval --inversion), if they were run."""
    if "inversion" not in results:
        return ""
    inv = results["inversion"]
    names = {"off": "a U-Net call (`--warm-start off`)",
             "previous": "the last step's estimate (`previous`)",
             "extrapolate": "extrapolated from the last two (`extrapolate`, default)"}
    lines = ["| first guess of each step's noise | U-Net calls (inversion) | round-trip error |",
             "|---|---:|---:|"] + [f"| {names.get(k, k)} | {r['calls']} | {100 * r['error']:.2f}% |"
                                   for k, r in inv["rows"].items()]
    return (f"## DDIM inversion round trips\n\nMade by `{inv['command']}` on {inv['machine']}. "
            f"{inv['latents']} test latents (4 s each) inverted under their own style to "
            f"strength {inv['strength']} in {inv['steps']} steps with one refinement each, "
            f"then regenerated under the same style; error: the norm of the difference over "
            f"the latent's norm.\n\n" + "\n".join(lines) + "\n\n")


def speed_markdown(results):
    """The speed table (train.py --stage eval --speed), if one was run."""
    if "speed" not in results:
        return ""
    sp = results["speed"]
    names = list(sp["rows"])
    lines = ["| stage | GFLOP | " + " | ".join(f"RTF {n}" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for stage in sp["rows"][names[0]]["rtf"]:
        cells = [f"{sp['rows'][n]['rtf'][stage]:.4f}" for n in names]
        lines.append(f"| {stage} | {sp['flops'].get(stage, 0):.1f} | " + " | ".join(cells) + " |")
    lines.append("| first call, seconds (warm-up; compilation) | | " + " | ".join(
        f"{sp['rows'][n]['first_call']:.1f}" for n in names) + " |")
    lines.append("| achieved GFLOP/s, end to end (share of matmul) | | " + " | ".join(
        f"{r['gflops']:.0f} ({100 * r['gflops'] / r['ceiling']:.0f}%)"
        for r in (sp["rows"][n] for n in names)) + " |")
    return (f"## Speed\n\nMade by `{sp['command']}` on {sp['machine']}. The default transfer "
            f"(`transfer.transfer`, as `python transfer.py` runs it) of the first "
            f"{sp['seconds']:.0f} s of a test piece, {sp['source']} to {sp['target']}; "
            f"real-time factor (compute seconds per second of audio) of each stage, median "
            f"of the runs after a first one. GFLOP: matmuls, convolutions and attention "
            f"counted by torch's FlopCounterMode. Matmul ceiling: "
            f"{sp['ceiling']['fp32']:.0f} GFLOP/s fp32, {sp['ceiling']['bf16']:.0f} bf16."
            f"\n\n" + "\n".join(lines) + "\n\n")


METRICS_NOTE = """- *style acc.*: the style classifier (`evaluate.StyleClassifier`, trained on the
  train split) names the target style.
- *content vs target / source*: mean frame-wise cosine of 12-bin chroma against the
  ground truth in the target style / the source; 1 means the same notes.
- *FAD-C*: Frechet distance between classifier embeddings of the outputs and of the
  ground-truth renderings in the target style, per target style, averaged. The usual
  VGGish embedding (FAD) cannot be downloaded here, so this uses the project's own
  classifier: compare values within this table only.
- *log-mel L1, MR-STFT, LSD*: spectral distances to the ground truth in the target style.
- *RTF*: compute seconds per second of audio (lower is faster), on the machine above."""
