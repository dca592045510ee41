"""What a results file records and how it reads: provenance (commit, checkpoint hashes,
machine), the rows a stopped run keeps (Keep, for --resume), results.json and the Markdown
tables made from it (RESULTS.md, SWEEP.md).

    evaluate.evaluate(...) -> results dict -> save -> results.json + RESULTS.md
"""
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import evaluate_real
import metrics


# ---------------------------------------------------------------- provenance
def machine():
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l]
        cpu = names[0] if names else cpu
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(),
                torch=torch.__version__, matmul_gflops_fp32=metrics.matmul_gflops(),
                matmul_gflops_bf16=metrics.matmul_gflops(dtype=torch.bfloat16))


def git_commit():
    """The commit the code ran at, with '+changes' when tracked files differ from it."""
    root = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def checkpoint_hashes(ckpt_dir):
    """sha256 of every checkpoint the evaluation may read, by path under ckpt_dir."""
    return {str(p.relative_to(ckpt_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(ckpt_dir).rglob("*.pt")) if not p.name.endswith(".train.pt")}


def provenance(command, ckpt_dir):
    return dict(command=command, commit=git_commit(), machine=machine(),
                checkpoints=checkpoint_hashes(ckpt_dir))


class Keep:
    """`--stage eval --resume`: each finished row (or table) of a run is kept as a JSON file
    in `folder`, named after the commit, the checkpoints, the run's options (a dict) and
    the row, so that a run stopped part way (a session's end) goes on where it stopped.
    Needs a clean checkout: the commit alone then says which code made a row.
    keep(name, compute) -> compute()'s value, or the one kept by an earlier sitting."""

    def __init__(self, folder=None, provenance=None, options=None):
        if folder and provenance["commit"].endswith("+changes"):
            raise ValueError("--resume keeps rows by commit: commit (or stash) the changes to "
                             "tracked files first")
        self.folder, self.reused, self.seconds = folder and Path(folder) or None, 0, 0.0
        self.scope = folder and json.dumps([provenance["commit"], provenance["checkpoints"],
                                            options], sort_keys=True)

    def __call__(self, name, compute):
        if self.folder is None:
            return compute()
        key = hashlib.sha256(json.dumps([self.scope, name]).encode()).hexdigest()[:24]
        path = self.folder / f"{key}.json"
        if path.is_file():
            kept = json.loads(path.read_text())
            self.reused, self.seconds = self.reused + 1, self.seconds + kept["seconds"]
            return kept["value"]
        t0 = time.perf_counter()
        value = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(name=name, value=value,
                                       seconds=time.perf_counter() - t0)))
        tmp.replace(path)
        return value


def save(results, out_dir, kind="results"):
    """Write KIND.json and its Markdown, each to a temporary file and renamed; return the
    Markdown. kind: "results" (RESULTS.md, and the README's block when out_dir is this
    checkout's results/), "sweep" (SWEEP.md) or "rows" (a development run of some rows:
    rows.json only, its tables returned)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = {"results": results_markdown, "sweep": sweep_markdown,
            "real": real_markdown}.get(kind, rows_markdown)(results)
    files = {f"{kind}.json": json.dumps(results, indent=1)}
    if kind != "rows":
        files[f"{kind.upper()}.md"] = text
    for name, content in files.items():
        tmp = out_dir / (name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, out_dir / name)
    here = Path(__file__).resolve().parent
    if kind == "results" and out_dir.resolve() == here / "results":
        update_readme(here / "README.md", results)
    return text


# ---------------------------------------------------------------- tables
COLUMNS = [("style_accuracy", "style acc. (%) ↑", "{:.1f}"),
           ("notes_kept", "notes kept ↑", "{:.3f}"),
           ("content_target", "chroma vs target ↑", "{:.3f}"),
           ("content_source", "chroma vs source", "{:.3f}"),
           ("fad_c", "FAD-C ↓", "{:.2f}"),
           ("kid", "KID ↓", "{:.1f}"),
           ("logmel_l1", "log-mel L1 ↓", "{:.3f}"),
           ("mrstft", "MR-STFT ↓", "{:.3f}"),
           ("lsd", "LSD (dB) ↓", "{:.2f}"),
           ("unet_calls", "U-Net calls / window", "{:.0f}"),
           ("gflop_per_s", "GFLOP / s of audio", "{:.1f}"),
           ("rtf", "RTF", "{:.4f}"),
           ("outputs", "outputs", "{:.0f}")]       # one-pair models score fewer


def results_table(rows, columns=COLUMNS, first="system"):
    """Markdown table of {name: metrics} in the order of `columns`."""
    def cell(m, key, fmt):
        value = m.get(key)
        if value is None or not math.isfinite(value):
            return "-"
        return fmt.format(value)
    lines = [f"| {first} | " + " | ".join(c[1] for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    lines += [f"| {name} | " + " | ".join(cell(m, k, fmt) for k, _, fmt in columns) + " |"
              for name, m in rows.items()]
    return "\n".join(lines)


def machine_line(r):
    m = r["machine"]
    return (f"{m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}; "
            f"matmul {m['matmul_gflops_fp32']:.0f} GFLOP/s fp32, "
            f"{m['matmul_gflops_bf16']:.0f} bf16 at the start")


def header(r, title):
    hashes = "\n".join(f"- `{k}` {v[:16]}" for k, v in r["checkpoints"].items())
    resumed = (f" (over more than one sitting: {r['kept_rows']} rows kept by the earlier ones, "
               f"`--resume`)" if r.get("kept_rows") else "")
    return (f"# {title}\n\nMade by `{r['command']}` at commit `{r['commit']}` in "
            f"{r['wall_seconds'] / 60:.0f} minutes{resumed} on {machine_line(r)}. Written by the "
            f"command; not edited by hand.\n\nCheckpoints (sha256, first 16 digits):\n\n"
            f"{hashes}\n\n")


def split_line(s):
    return (f"{s['name']} split: {s['pieces']} pieces x {len(s['styles'])} styles "
            f"({', '.join(s['styles'])}), {s['seconds']:.0f} s each")


def results_markdown(r):
    """RESULTS.md from results.json."""
    s, floor = r["split"], r["fad_floor"]
    first = next(iter(r["transfer"].values()), {})
    n = first.get("set_size", "?")
    text = header(r, "Results") + (
        f"## Transfer ({s['name']} split)\n\n{split_line(s)}; every ordered pair of distinct "
        f"styles, scored against the rendering of the piece in the target style and against "
        f"its score. FAD-C and KID per style pair over N = {n} window embeddings on each side "
        f"(FAD-C in {floor.get('dims', 16)} principal directions), averaged over pairs. Their "
        f"floor (the {s['name']} ground truth against as many train pieces of the same style): "
        f"FAD-C {floor['fad_c']:.2f}, KID {floor['kid']:.1f}.\n\n"
        f"{results_table(r['transfer'])}\n\n{by_target_markdown(r['transfer'])}"
        f"## Resynthesis ({s['name']} split)\n\nEach piece in each style, from its own "
        f"ground truth, scored against it.\n\n{results_table(r['resynthesis'])}\n\n")
    if "tuning" in r:
        t = r["tuning"]
        text += (f"## Tuning (validation split)\n\nWhere the defaults are chosen; the test "
                 f"split above is scored once. {split_line(t['split'])}.\n\n")
        if "vocoder" in t:
            text += f"GuideDiff settings (resynthesis):\n\n{results_table(t['vocoder'])}\n\n"
        text += inversion_markdown(t["inversion"])
    if "real" in r:
        text += "## Real recordings (development set)\n\n" + \
            evaluate_real.real_markdown(r["real"]) + "\n"
    if "speed" in r:
        text += speed_markdown(r["speed"])
    return text + METRICS_NOTE + "\n"


def by_target_markdown(rows):
    """The default transfer row per target style, beside the identity's and the oracle's
    notes kept into the same targets (empty for rows without by_target: older results)."""
    default = next((m for k, m in rows.items() if k.startswith("transfer.py defaults")), {})
    refs = {k: rows.get(name, {}).get("by_target", {}) for k, name in
            (("identity", "identity (source unchanged)"),
             ("oracle", "oracle (target-style ground truth)"))}
    if "by_target" not in default:
        return ""
    lines = ["| target style | style acc. (%) ↑ | notes kept ↑ | identity's notes kept | "
             "oracle's notes kept |", "|---|---:|---:|---:|---:|"]
    for style, m in default["by_target"].items():
        ref = [refs[k].get(style, {}).get("notes_kept") for k in ("identity", "oracle")]
        lines.append(f"| {style} | {m['style_accuracy']:.1f} | {m['notes_kept']:.3f} | " +
                     " | ".join("-" if v is None else f"{v:.3f}" for v in ref) + " |")
    return ("The default row by target style (each from the other five), beside what the "
            "unchanged sources and the target's ground truth keep of the same pieces' "
            "scores:\n\n" + "\n".join(lines) + "\n\n")


SUMMARY_COLUMNS = [c for c in COLUMNS if c[0] in ("style_accuracy", "notes_kept", "content_target",
                                                  "fad_c", "kid", "mrstft", "rtf", "outputs")]
README_BEGIN, README_END = "<!-- results: written by train.py --stage eval -->", "<!-- /results -->"


def summary_markdown(r):
    """The README's few rows: the references, the default transfer, the baselines' best,
    and the vocoders, at the run's commit (the full tables are in RESULTS.md)."""
    def pick(table, *starts):
        return {k: v for k, v in r[table].items() if k.startswith(starts)}
    transfer = pick("transfer", "oracle", "identity", "transfer.py defaults", "CycleGAN",
                    "MusicVAE")
    resynthesis = pick("resynthesis", "Griffin-Lim", "GuideDiff", "autoencoder round trip + G")
    s = r["split"]
    return (f"From `{r['command']}` at commit `{r['commit'][:12]}` on {machine_line(r)} "
            f"({r['wall_seconds'] / 60:.0f} minutes); {split_line(s)}, all "
            f"{len(s['styles']) * (len(s['styles']) - 1)} ordered style pairs. FAD-C floor "
            f"{r['fad_floor']['fad_c']:.2f}, KID floor {r['fad_floor']['kid']:.1f}.\n\n"
            f"{results_table(transfer, SUMMARY_COLUMNS)}\n\n"
            f"{results_table(resynthesis, SUMMARY_COLUMNS)}\n")


def update_readme(path, r):
    """Replace the README's results block (between README_BEGIN and README_END) with
    summary_markdown(r); a README without the markers is left alone. Returns whether it
    was written."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    tail = rest.split(README_END, 1)[1]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{head}{README_BEGIN}\n{summary_markdown(r)}{README_END}{tail}")
    os.replace(tmp, path)
    return True


def rows_markdown(r):
    return "\n\n".join(results_table(r[k]) for k in ("transfer", "resynthesis") if r[k]) + "\n"


def inversion_markdown(inv):
    names = {"off": "a U-Net call (`--warm-start off`)",
             "previous": "the last step's estimate (`previous`)",
             "extrapolate": "extrapolated from the last two (`extrapolate`, default)"}
    lines = ["| first guess of each step's noise | U-Net calls (inversion) | round-trip error |",
             "|---|---:|---:|"] + [f"| {names.get(k, k)} | {r['calls']} | {100 * r['error']:.2f}% |"
                                   for k, r in inv["rows"].items()]
    return (f"DDIM inversion round trips: {inv['latents']} val latents ({inv['seconds']:.0f} s "
            f"each) inverted under their own style to strength {inv['strength']} in "
            f"{inv['steps']} steps with one refinement each, then regenerated under the same "
            f"style; error: the norm of the difference over the latent's norm.\n\n"
            + "\n".join(lines) + "\n\n")


def speed_markdown(sp):
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
    return (f"## Speed\n\nThe default transfer (`transfer.transfer`, as `python transfer.py` "
            f"runs it) of the first {sp['seconds']:.0f} s of a test piece, {sp['source']} to "
            f"{sp['target']}; real-time factor (compute seconds per second of audio) of each "
            f"stage, median of the runs after a first one. GFLOP: matmuls, convolutions and "
            f"attention counted by torch's FlopCounterMode. Matmul ceiling measured before "
            f"the table: {sp['ceiling']['fp32']:.0f} GFLOP/s fp32, "
            f"{sp['ceiling']['bf16']:.0f} bf16.\n\n" + "\n".join(lines) + "\n\n")


def real_markdown(r):
    """REAL.md (a development run of the real set alone)."""
    return header(r, "Real recordings (development run)") + evaluate_real.real_markdown(r["real"])


def sweep_markdown(r):
    """SWEEP.md from sweep.json (train.py --stage eval --sweep)."""
    sw = r["sweep"]
    rows = {f"{x['mode']}, strength {x['strength']}, w = {x['guidance']}": x
            for x in sw["rows"]}
    rows["identity (source unchanged)"] = sw["identity"]
    pick = sw["pick"]
    return (header(r, "LDM sweep: strength x guidance (validation split)") +
            f"The first {sw['seconds']:.0f} s of {sw['pieces']} val pieces, every ordered "
            f"style pair, each setting run through `transfer.transfer()` (its other defaults). "
            f"Pick: of the settings with at least 95% style accuracy, the one that keeps the "
            f"most notes: **{pick['mode']}, strength {pick['strength']}, "
            f"w = {pick['guidance']}**.\n\n{results_table(rows, first='setting')}\n\n"
            + METRICS_NOTE + "\n")


METRICS_NOTE = """## Columns

- *style acc.*: the style classifier (`metrics.StyleClassifier`, trained on the train
  split) names the target style.
- *notes kept*: mean frame-wise cosine of the output's 12-bin chroma against the piece's
  score (the pitch classes sounding in `metadata.json`'s note events); the oracle render
  is this dataset's ceiling, the identity what the unchanged source keeps.
- *chroma vs target / source*: the same cosine against the chroma of the ground truth in
  the target style / of the source; it rewards timbre as well as notes.
- *FAD-C, KID*: Frechet distance and kernel inception distance (unbiased, cubic kernel)
  between classifier embeddings of the outputs and of the ground truth in the target
  style. The usual VGGish embedding cannot be downloaded here, so these use the project's
  own classifier: compare values within this project only.
- *log-mel L1, MR-STFT, LSD*: spectral distances to the ground truth in the target style.
- *U-Net calls / window*: U-Net evaluations per 4-s latent window (classifier-free
  guidance's two halves count two; `speed.unet_calls`); *GFLOP / s of audio*: the whole
  `transfer()` call's matmuls and convolutions, counted on one output.
- *RTF*: compute seconds per second of audio (lower is faster), on the machine above; a
  transfer row's is the whole `transfer()` call."""
