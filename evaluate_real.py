"""The real-recording evaluation: transfer excerpts of music the project never trained on.

Real music has no ground truth in another style, so two things are measured, per target
style, on every excerpt of the files in the given folders (Debian's game soundtracks, for
instance: see the README):

- *style accuracy*: the project's style classifier (trained through augment.Chain, so it
  judges recordings, not only renders) names the target;
- *content kept*: how much of the source's chroma the output follows, against chance:

      kept = (match(out, src) - mean_s match(out, src shifted by s)) / (1 - mean_s match(src, src shifted by s))

  match: the mean frame-wise chroma cosine (metrics). Same key but the wrong moment scores
  0, the unchanged source 1.

    score_real(models, judge, excerpts) -> {"styles": {target: {accuracy, content_kept}}, ...}
"""
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

import augment
import data
import metrics
import transfer as transfer_lib

EXCERPT_SECONDS = 15.0
SHIFTS = (2.0, 3.0, 4.0, 5.0)     # seconds: the "wrong moment" the chance level is taken at


def find_files(dirs, per_dir=None, tune=0):
    """Audio files under each folder (sorted, recursive); per_dir keeps that many, spread
    evenly over each folder's list. tune > 0: instead up to `tune` files of each folder
    from those the per_dir selection leaves out (spread evenly), a tuning slice apart from
    the reported set. A missing or empty folder is a ValueError."""
    def spread(found, n):
        if not n or len(found) <= n:
            return found
        return [found[i] for i in np.linspace(0, len(found) - 1, n).round().astype(int)]
    files = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise ValueError(f"--real {d} is not a folder; install the music (see the README) "
                             f"or point --real at a folder of audio files")
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in data.AUDIO_EXTS)
        if not found:
            raise ValueError(f"no audio files under {d}")
        chosen = spread(found, per_dir)
        if tune:
            chosen = spread([p for p in found if p not in set(chosen)], tune)
        files += chosen
    if tune and not files:
        raise ValueError(f"--real-tune: every file of {', '.join(map(str, dirs))} is in the "
                         f"reported selection (--real-files {per_dir}); give fewer --real-files "
                         f"or more music")
    return files


def read_excerpt(path, seconds=EXCERPT_SECONDS):
    """(mono wave (N,), sample rate) of `seconds` from a third of the way in (at most 30 s
    in: past an intro, wherever the music is); a file shorter than that gives all of it."""
    info = sf.info(str(path))
    n = int(seconds * info.samplerate)
    start = max(0, min(int(30 * info.samplerate), info.frames // 3, info.frames - n))
    wave, sr = sf.read(str(path), start=start, frames=n, dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def _shifted_match(c_a, c_b, frames):
    """match(a, b shifted by `frames` chroma frames): a's frame t against b's t + frames."""
    return metrics.frame_cosine(c_a[..., :c_a.shape[-1] - frames], c_b[..., frames:])


def content_kept(out, src, sample_rate, shifts=SHIFTS):
    """Content kept (B,) of outputs (B, N) against their sources (B, N), as defined above."""
    c_out, c_src = metrics.crop_pair(metrics.chroma(out, sample_rate),
                                     metrics.chroma(src, sample_rate))
    lags = [int(round(s * sample_rate / metrics.CHROMA_HOP)) for s in shifts]
    lags = [k for k in lags if k < c_src.shape[-1] // 2] or [c_src.shape[-1] // 4]
    chance_out = torch.stack([_shifted_match(c_out, c_src, k) for k in lags]).mean(0)
    chance_src = torch.stack([_shifted_match(c_src, c_src, k) for k in lags]).mean(0)
    aligned = metrics.frame_cosine(c_out, c_src)
    return (aligned - chance_out) / (1 - chance_src).clamp_min(1e-3)


@torch.no_grad()
def score_real(models, judge, files, progress=True, **settings):
    """Every excerpt into every style with transfer.transfer() (its defaults, or settings:
    its keyword arguments, for development), judged by the classifier at 16 kHz. Returns
    per-target accuracy and content kept, the same for the unchanged sources, and the
    excerpts' names."""
    sr, styles = judge.sample_rate, models.styles
    rows = {t: dict(correct=[], content_kept=[], source_correct=[]) for t in styles}
    names = []
    bar = tqdm(total=len(files) * len(styles), desc="real excerpts", disable=not progress)
    for path in files:
        wave, file_sr = read_excerpt(path)
        names.append(dict(file=str(path), seconds=len(wave) / file_sr, sample_rate=file_sr))
        source = torch.from_numpy(data.resample(wave, file_sr, sr))[None]
        source_label = judge.classifier(judge.logmel(source)).argmax(-1).item()
        for target in styles:
            out, out_sr = transfer_lib.transfer(wave, file_sr, target, models=models,
                                                progress=False, **settings)
            out = torch.from_numpy(data.resample(out, out_sr, sr))[None]
            out, src = metrics.crop_pair(out, source)
            label = judge.classifier(judge.logmel(out)).argmax(-1).item()
            row = rows[target]
            row["correct"].append(float(label == styles.index(target)))
            row["source_correct"].append(float(source_label == styles.index(target)))
            row["content_kept"].append(content_kept(out, src, sr).item())
            bar.update()
    bar.close()
    table = {t: dict(accuracy=100 * float(np.mean(r["correct"])),
                     content_kept=float(np.mean(r["content_kept"])),
                     content_kept_min=float(np.min(r["content_kept"])),
                     identity_accuracy=100 * float(np.mean(r["source_correct"])),
                     outputs=len(r["correct"])) for t, r in rows.items()}
    return dict(excerpts=names, excerpt_seconds=EXCERPT_SECONDS, styles=table,
                mean=dict(accuracy=float(np.mean([r["accuracy"] for r in table.values()])),
                          content_kept=float(np.mean([r["content_kept"]
                                                      for r in table.values()]))))


@torch.no_grad()
def augmented_accuracy(judge, split, window_seconds=4.0, seed=0):
    """Classifier accuracy (%) on 4 s windows of a paired split's renders, each sent through
    a seeded recording chain: how well the judge knows recordings of known style."""
    window = int(window_seconds * judge.sample_rate)
    chain, generator = augment.Chain(judge.sample_rate), torch.Generator().manual_seed(seed)
    correct = []
    for (_, style), wave in sorted(split.waves.items()):
        clips = wave[:len(wave) // window * window].reshape(-1, window)
        labels = judge.classifier(judge.logmel(chain(clips, generator))).argmax(-1)
        correct += (labels == split.styles.index(style)).float().tolist()
    return 100 * float(np.mean(correct))


@torch.no_grad()
def render_content_kept(split, sample_rate, seconds=EXCERPT_SECONDS):
    """{target style: content kept} of the paired renders themselves: the first `seconds` of
    each piece's target-style render against its render in every other style, averaged.
    What a perfect transfer scores (the timbre changes the chroma too): the measure's ceiling."""
    n = int(seconds * sample_rate)
    return {tgt: float(np.mean([content_kept(split.waves[p, tgt][None, :n],
                                             split.waves[p, src][None, :n], sample_rate).item()
                                for p in split.pieces for src in split.styles if src != tgt]))
            for tgt in split.styles}


def real_markdown(real):
    """The per-style table of the real set (RESULTS.md and REAL.md)."""
    folders = real.get("folders") or sorted({str(Path(e["file"]).parent)
                                              for e in real["excerpts"]})
    renders = real.get("render_content_kept")            # older results have none
    lines = ["| target style | classifier names the target (%) ↑ | content kept ↑ | "
             "lowest content kept | unchanged source named the target (%) | outputs |" +
             (" content kept by the target's render (val) |" if renders else ""),
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if renders else "")]
    for style, r in real["styles"].items():
        lines.append(f"| {style} | {r['accuracy']:.1f} | {r['content_kept']:.3f} | "
                     f"{r['content_kept_min']:.3f} | {r['identity_accuracy']:.1f} | "
                     f"{r['outputs']} |" + (f" {renders[style]:.3f} |" if renders else ""))
    m = real["mean"]
    lines.append(f"| **mean** | {m['accuracy']:.1f} | {m['content_kept']:.3f} | | | |" +
                 (f" {np.mean(list(renders.values())):.3f} |" if renders else ""))
    ceiling = (" The last column is the measure on the paired val renders: a piece's render "
               "in the target style against its render in each other style, what a perfect "
               "transfer of a render would score (a new timbre moves the chroma too)."
               if renders else "")
    accuracy = real.get("classifier_augmented_val")
    judge = (f" The classifier names the style of {accuracy:.1f}% of val renders sent "
             f"through the recording chain (augment.Chain, seeded)." if accuracy else "")
    return (f"{len(real['excerpts'])} excerpts of {real['excerpt_seconds']:.0f} s (a third of "
            f"the way into each file, at most 30 s in) from {', '.join(folders)}, each "
            f"transferred into every style by `transfer.transfer()` with "
            f"{real.get('settings_name') or 'its defaults'}. Content "
            f"kept: chroma match to the source minus the match to the source {SHIFTS[0]:.0f}-"
            f"{SHIFTS[-1]:.0f} s later, over the same for the source itself (identity 1, the "
            f"right key at the wrong moment 0).{judge}{ceiling}\n\n" + "\n".join(lines) + "\n")
