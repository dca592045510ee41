"""Entry point for everything that is built or trained: one stage per `--stage`.

    python train.py --stage data --out data/builtin [--pieces N] [--seconds S] [--seed K]
    python train.py --stage classifier [--data data/builtin] [--steps N]
    python train.py --stage eval [--pieces N]      -> results/results.json, results/RESULTS.md

Stages land one issue at a time; `--help` lists the ones that exist.
"""
import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import config
import data
import evaluate
from stft import LogMel, griffin_lim


# ---------------------------------------------------------------- the shared training loop
def lr_at(step, lr, warmup, total):
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def forever(loader):
    while True:
        yield from loader


def train_loop(model, loss_fn, batches, steps, lr, weight_decay, warmup, ema_decay, log_dir,
               desc, validate=None, every=200):
    """AdamW + warm-up/cosine + gradient clipping + EMA weights; returns the EMA model.

    loss_fn(model, batch) -> scalar loss; validate(model) -> dict of numbers, run on the
    EMA model every `every` steps. One JSON line per log in log_dir/log.jsonl.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "log.jsonl", "a")
    bar, t0 = tqdm(range(steps), desc=desc), time.perf_counter()
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, warmup, steps)
        loss = loss_fn(model, next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():                       # ema <- decay ema + (1 - decay) model
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - ema_decay)
        record = dict(step=step + 1, loss=loss.item(), grad_norm=grad_norm.item(),
                      lr=group["lr"], steps_per_s=(step + 1) / (time.perf_counter() - t0))
        if validate and ((step + 1) % every == 0 or step + 1 == steps):
            record.update(validate(ema))
        bar.set_postfix(loss=f"{record['loss']:.4f}", **{k: f"{v:.3f}" for k, v in record.items()
                                                          if k.startswith("val")})
        log.write(json.dumps(record) + "\n")
    log.close()
    return ema


# ---------------------------------------------------------------- stages


def stage_data(args, cfg):
    pieces = args.pieces or cfg.data.pieces
    seconds = args.seconds or cfg.data.seconds
    if pieces < 3:
        raise ValueError(f"--pieces {pieces} is too few: the split needs one piece each for "
                         f"train, val and test, so use 3 or more")
    if seconds < 1:
        raise ValueError(f"--seconds {seconds} is too short: use 1 or more")
    t0 = time.perf_counter()
    meta = data.build_dataset(args.out, pieces=pieces, seconds=seconds, seed=args.seed,
                              sample_rate=cfg.audio.sample_rate, workers=args.workers,
                              progress=lambda it, total: tqdm(it, total=total, desc="rendering",
                                                              unit="piece"))
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.wav"))
    n = {s: len(v) for s, v in meta["splits"].items()}
    print(f"wrote {pieces} pieces x {len(meta['styles'])} styles ({', '.join(meta['styles'])}) "
          f"to {args.out}: train/val/test pieces {n['train']}/{n['val']}/{n['test']}, "
          f"{size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s")


def stage_classifier(args, cfg):
    c, device = cfg.classifier, torch.device(args.device)
    torch.manual_seed(args.seed)
    train = data.AudioFolder(args.data, "train", cfg.audio.sample_rate, c.clip_seconds,
                             random_clips=True, progress=tqdm)
    val = data.AudioFolder(args.data, "val", cfg.audio.sample_rate, c.clip_seconds,
                           random_clips=False, styles=train.styles)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size or c.batch_size,
                                         shuffle=True, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=64)
    logmel = LogMel(**asdict(cfg.audio)).to(device)
    model = evaluate.StyleClassifier(len(train.styles), c.channels, c.emb_dim).to(device)

    def loss_fn(model, batch):
        wave, label = (t.to(device) for t in batch)
        gain_db = (torch.rand(len(wave), 1, device=device) * 2 - 1) * c.gain_db
        return F.cross_entropy(model(logmel(wave * 10 ** (gain_db / 20))), label)

    @torch.no_grad()
    def validate(model):
        correct = sum((model(logmel(w.to(device))).argmax(-1).cpu() == y).sum().item()
                      for w, y in val_loader)
        return {"val_accuracy": correct / len(val)}

    steps = args.steps or c.steps
    ema = train_loop(model, loss_fn, forever(loader), steps, c.lr, c.weight_decay, c.warmup,
                     c.ema, Path(args.runs) / "classifier", "classifier", validate)
    acc = validate(ema)["val_accuracy"]
    path = Path(args.ckpt_dir) / "classifier.pt"
    config.save_checkpoint(path, config=config.config_to_dict(cfg), model=ema.state_dict(),
                           styles=train.styles, step=steps, val_accuracy=acc)
    print(f"classifier: {sum(p.numel() for p in ema.parameters())} parameters, "
          f"validation accuracy {100 * acc:.1f}% on {len(val)} clips -> {path}")


def load_classifier(ckpt_dir):
    ckpt = config.load_checkpoint(Path(ckpt_dir) / "classifier.pt", "classifier")
    cfg = config.config_from_dict(ckpt["config"])
    model = evaluate.StyleClassifier(len(ckpt["styles"]), cfg.classifier.channels,
                                     cfg.classifier.emb_dim)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt["styles"], cfg


def machine_description():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l]
        cpu = names[0] if names else cpu
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} "
            f"threads; matmul {evaluate.matmul_gflops():.0f} GFLOP/s fp32, "
            f"{evaluate.matmul_gflops(dtype=torch.bfloat16):.0f} GFLOP/s bf16")


def reference_systems(waves, cfg):
    """The rows every later number is read against (ground truth, identity, wrong piece,
    Griffin-Lim): system(wave, source style, target style, piece) -> wave."""
    ids = sorted({p for p, _ in waves})
    a = cfg.audio
    logmel = LogMel(**asdict(a))
    generator = torch.Generator().manual_seed(0)

    def griffin_lim_resynthesis(wave, src, tgt, piece):
        target = waves[piece, tgt]
        magnitude = logmel.mel_to_magnitude(logmel(target[None]))
        return griffin_lim(magnitude, a.n_fft, a.hop, n_iter=64, length=len(target),
                           generator=generator)[0]

    return {
        "oracle (target-style ground truth)": lambda w, s, t, p: waves[p, t],
        "identity (source unchanged)": lambda w, s, t, p: w,
        "random target (other piece, target style)":
            lambda w, s, t, p: waves[ids[(ids.index(p) + 1) % len(ids)], t],
        "Griffin-Lim, 64 it. (ground-truth log-mel)": griffin_lim_resynthesis,
    }


def stage_eval(args, cfg):
    classifier, styles, cfg = load_classifier(args.ckpt_dir)
    waves, test_styles = data.load_paired_split(args.data, "test", cfg.audio.sample_rate,
                                                pieces=args.pieces)
    if test_styles != styles:
        raise ValueError(f"the classifier knows styles {styles} but {args.data} has "
                         f"{test_styles}; retrain it with `python train.py --stage classifier`")
    logmel = LogMel(**asdict(cfg.audio))
    out_dir = Path(args.results)
    results_path = out_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    rows = results.setdefault("transfer", {})
    computed = {"Griffin-Lim, 64 it. (ground-truth log-mel)"}
    for name, system in tqdm(reference_systems(waves, cfg).items(), desc="scoring"):
        rows[name] = evaluate.score_system(system, waves, styles, classifier, logmel,
                                           cfg.audio.sample_rate)
        if name not in computed:
            rows[name].pop("rtf")           # returning stored audio costs nothing
    pieces = sorted({p for p, _ in waves})
    results["machine"] = machine_description()
    results["test_set"] = dict(pieces=len(pieces), styles=styles,
                               seconds=len(next(iter(waves.values()))) / cfg.audio.sample_rate)
    results["command"] = "python " + " ".join(sys.argv)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_name("results.json.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, results_path)
    write_results_md(results, out_dir / "RESULTS.md")
    print(evaluate.results_table(rows))


def write_results_md(results, path):
    t = results["test_set"]
    text = (f"# Results\n\nMade by `{results['command']}` on {results['machine']}.\n\n"
            f"## Transfer\n\nTest split: {t['pieces']} held-out pieces x {len(t['styles'])} "
            f"styles ({', '.join(t['styles'])}), {t['seconds']:.0f} s each; every ordered "
            f"pair of distinct styles, scored against the ground-truth rendering of the piece "
            f"in the target style.\n\n{evaluate.results_table(results['transfer'])}\n\n"
            f"{METRICS_NOTE}\n")
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


METRICS_NOTE = """- *style acc.*: the style classifier (`evaluate.StyleClassifier`, trained on the
  train split) names the target style.
- *content vs target / source*: mean frame-wise cosine of 12-bin chroma against the
  ground truth in the target style / the source; 1 means the same notes.
- *FAD-C*: Frechet distance between classifier embeddings of the outputs and of the
  ground-truth target renderings. The usual VGGish embedding (FAD) cannot be downloaded
  here, so this uses the project's own classifier: compare values within this table only.
- *log-mel L1, MR-STFT, LSD*: spectral distances to the ground truth in the target style.
- *RTF*: compute seconds per second of audio (lower is faster), on the machine above."""


STAGES = {"data": stage_data, "classifier": stage_classifier, "eval": stage_eval}


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
                   help="data: pieces to build (default: preset); eval: test pieces to score")
    g = p.add_argument_group("data stage")
    g.add_argument("--out", default="data/builtin", help="where the built-in dataset is written")
    g.add_argument("--seconds", type=float, default=None, help="length of each piece")
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
