"""Tests for evaluate.py and report.py: scoring reference systems with known answers, the
transfer row is transfer() itself, the sweep's pick, and the tables written from results."""
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import data
import evaluate
import metrics
import report
import speed
import train
import transfer
from stft import LogMel

SR = 16000
ROOT = Path(__file__).resolve().parent.parent
CKPT = ROOT / "checkpoints"


def _split_and_judge(pieces=("p0", "p1"), styles=("a", "b", "c")):
    torch.manual_seed(0)
    waves = {(p, s): torch.randn(SR * 2) * 0.1 for p in pieces for s in styles}
    classifier = metrics.StyleClassifier(len(styles), channels=(8, 8, 8, 8), emb_dim=4).eval()
    scores = {p: [dict(role="melody", pitch=60 + i, start=0.0, end=2.0)] for i, p in
              enumerate(pieces)}
    judge = metrics.Judge(classifier, LogMel(), SR, scores, basis=(np.zeros(4), np.eye(4)[:, :2]))
    return metrics.Split(waves, list(styles), "test"), judge


def test_score_system_reference_rows(monkeypatch):
    monkeypatch.setattr(metrics, "WINDOW_SECONDS", 0.5)      # 4 windows a clip
    split, judge = _split_and_judge()
    oracle = metrics.score_system(lambda w, s, t, p: split.waves[p, t], split, judge)
    identity = metrics.score_system(lambda w, s, t, p: w, split, judge)
    assert oracle["outputs"] == 2 * 3 * 2 and oracle["set_size"] == 2 * 4
    assert oracle["content_target"] == pytest.approx(1.0, abs=1e-5)
    assert oracle["logmel_l1"] == 0 and oracle["lsd"] == 0 and oracle["fad_c"] < 1e-6
    assert oracle["kid"] <= 0                                 # identical sets (unbiased)
    by_target = oracle["by_target"]                          # every target as often
    assert list(by_target) == list(split.styles)
    for key in ("style_accuracy", "notes_kept"):
        assert np.mean([r[key] for r in by_target.values()]) == pytest.approx(oracle[key])
    assert identity["content_source"] == pytest.approx(1.0, abs=1e-5)
    assert identity["logmel_l1"] > 0.1 and identity["fad_c"] > 0
    # The same outputs give the same notes kept, whatever the pair.
    assert oracle["notes_kept"] == pytest.approx(identity["notes_kept"], abs=1e-6)
    resynth = metrics.score_system(lambda w, s, t, p: 0.5 * w, split, judge, resynthesis=True)
    assert resynth["outputs"] == 2 * 3 and "content_source" not in resynth
    assert resynth["lsd"] == pytest.approx(20 * math.log10(2), abs=1e-3)  # half amplitude
    one_pair = lambda w, s, t, p: w                            # noqa: E731
    one_pair.pairs = {("a", "b"), ("b", "a")}
    assert metrics.score_system(one_pair, split, judge)["outputs"] == 2 * 2


def test_best_setting_keeps_the_most_notes_among_those_that_change_the_style():
    rows = [dict(mode="sdedit", strength=0.9, guidance=5.0, style_accuracy=100.0, notes_kept=0.5),
            dict(mode="inversion", strength=0.9, guidance=3.0, style_accuracy=97.0,
                 notes_kept=0.79),
            dict(mode="inversion", strength=0.5, guidance=3.0, style_accuracy=60.0,
                 notes_kept=0.81)]
    assert evaluate.best_setting(rows) == dict(mode="inversion", strength=0.9, guidance=3.0)
    assert evaluate.best_setting(rows[2:])["strength"] == 0.5     # none reaches the bar


def test_report_tables_come_from_the_results(tmp_path):
    split, judge = _split_and_judge()
    rows = {"identity": metrics.score_system(lambda w, s, t, p: w, split, judge)}
    results = dict(command="python train.py --stage eval", commit="abc+changes",
                   machine=dict(cpu="cpu", cores=2, threads=2, torch="x",
                                matmul_gflops_fp32=100.0, matmul_gflops_bf16=300.0),
                   checkpoints={"ldm.pt": "0" * 64}, wall_seconds=60.0,
                   split=evaluate.split_summary(split, SR), fad_floor=dict(fad_c=1.0, kid=0.0),
                   transfer=rows, resynthesis=rows)
    text = report.save(results, tmp_path)
    assert (tmp_path / "RESULTS.md").read_text() == text
    assert json.loads((tmp_path / "results.json").read_text())["commit"] == "abc+changes"
    assert "| identity | " in text and "abc+changes" in text and "notes kept" in text
    assert "sitting" not in text
    assert "2 rows kept by the earlier ones" in report.save(dict(results, kept_rows=2), tmp_path)
    report.save(results, tmp_path / "dev", "rows")
    # The default row by target style, beside the identity's notes kept into each.
    assert "by target style" not in text                          # no default row: no table
    default = dict(rows["identity"], by_target={s: dict(style_accuracy=10.0 * k, notes_kept=0.1)
                                                for k, s in enumerate(split.styles)})
    text = report.save(dict(results, transfer={"transfer.py defaults: x": default,
                                               "identity (source unchanged)": rows["identity"]}),
                       tmp_path / "by_target")
    for k, style in enumerate(split.styles):
        kept = rows["identity"]["by_target"][style]["notes_kept"]
        assert f"| {style} | {10.0 * k:.1f} | 0.100 | {kept:.3f} | - |" in text
    assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["rows.json"]
    # The real-set table, per target style, in RESULTS.md and in a development REAL.md.
    per_style = {s: dict(accuracy=50.0 + k, content_kept=0.5, content_kept_min=0.1,
                         identity_accuracy=10.0, outputs=4) for k, s in enumerate(split.styles)}
    results["real"] = dict(excerpts=[dict(file="/music/a.ogg", seconds=15.0, sample_rate=44100)],
                           excerpt_seconds=15.0, styles=per_style, folders=["/music"],
                           mean=dict(accuracy=51.0, content_kept=0.5),
                           classifier_augmented_val=97.5,
                           render_content_kept={s: 0.25 + k / 100
                                                for k, s in enumerate(split.styles)})
    text = report.save(results, tmp_path)
    assert "## Real recordings" in text and "97.5%" in text and "/music" in text
    for k, style in enumerate(split.styles):
        assert f"| {style} | {50.0 + k:.1f} | 0.500 |" in text
        assert f"| 10.0 | 4 | {0.25 + k / 100:.3f} |" in text
    real = report.save(results, tmp_path / "dev", "real")
    assert (tmp_path / "dev" / "REAL.md").read_text() == real and "| **mean** | 51.0" in real


def test_resume_keeps_rows_by_commit_checkpoints_and_options(tmp_path):
    prov = dict(commit="a" * 40, checkpoints={"ldm.pt": "0" * 64})
    opts, calls = asdict(evaluate.EvalOptions(keep=str(tmp_path))), []

    def compute(value):
        return lambda: calls.append(value) or dict(score=value)
    assert report.Keep()("row", compute(1.0)) == dict(score=1.0)    # no folder: no keeping
    assert not list(tmp_path.iterdir())
    first = report.Keep(tmp_path, prov, opts)
    assert first("row", compute(2.0)) == dict(score=2.0) and first.reused == 0
    again = report.Keep(tmp_path, prov, opts)                        # the next sitting
    assert again("row", compute(3.0)) == dict(score=2.0) and again.reused == 1
    assert again("other row", compute(4.0)) == dict(score=4.0)
    for other in (dict(prov, commit="b" * 40), dict(prov, checkpoints={"ldm.pt": "1" * 64})):
        assert report.Keep(tmp_path, other, opts)("row", compute(5.0)) == dict(score=5.0)
    more = asdict(evaluate.EvalOptions(keep=str(tmp_path), pieces=3))
    assert report.Keep(tmp_path, prov, more)("row", compute(6.0)) == dict(score=6.0)
    assert calls == [1.0, 2.0, 4.0, 5.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="commit"):
        report.Keep(tmp_path, dict(prov, commit="a" * 40 + "+changes"), opts)
    # From the command line: no --resume, no keeping (a checkout with changes may run).
    plain = evaluate.EvalOptions.from_args(train.parse_args(["--stage", "eval"]))
    assert plain.keep is None and report.Keep(plain.keep, dict(prov, commit="x+changes"),
                                              asdict(plain))("row", compute(7.0)) == dict(score=7.0)
    resumed = train.parse_args(["--stage", "eval", "--resume", "--runs", str(tmp_path)])
    assert evaluate.EvalOptions.from_args(resumed).keep == str(tmp_path / "eval")


@pytest.mark.skipif(not (CKPT / "ldm.pt").is_file(), reason="no committed checkpoints")
def test_the_transfer_row_is_transfer_itself():
    """The eval's transfer system and a user's transfer() call give the same output."""
    models = transfer.load_models(CKPT)
    wave = torch.from_numpy(data.load_audio(ROOT / "examples" / "song.wav", SR)[:2 * SR])
    system = evaluate.transfer_system(models, SR)
    ours = system(wave, "piano", "rock", "piece0010")
    theirs, sr = transfer.transfer(wave.numpy(), SR, "rock", models=models, progress=False)
    assert sr == SR and torch.equal(ours, torch.from_numpy(theirs))
    student = "2-step student" if models.student is not None else "LDM"
    assert evaluate.transfer_row_name(models).startswith(f"transfer.py defaults: {student} ")
    fast = evaluate.transfer_system(models, SR, steps=1, mode="sdedit")(wave, "piano", "rock", "p")
    again, _ = transfer.transfer(wave.numpy(), SR, "rock", models=models, progress=False,
                                 steps=1, mode="sdedit")
    assert torch.equal(fast, torch.from_numpy(again)) and not torch.equal(fast, ours)


def test_readme_block_is_replaced_and_nothing_else(tmp_path):
    split, judge = _split_and_judge()
    rows = {"oracle (target-style ground truth)":
            metrics.score_system(lambda w, s, t, p: split.waves[p, t], split, judge)}
    results = dict(command="python train.py --stage eval", commit="f" * 40,
                   machine=dict(cpu="cpu", cores=2, threads=2, torch="x",
                                matmul_gflops_fp32=100.0, matmul_gflops_bf16=300.0),
                   checkpoints={}, wall_seconds=60.0, split=evaluate.split_summary(split, SR),
                   fad_floor=dict(fad_c=1.0, kid=0.0), transfer=rows, resynthesis={})
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold numbers\n{report.README_END}\nlimits\n")
    assert report.update_readme(readme, results)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{report.README_END}\nlimits\n")
    assert "old numbers" not in text and "| oracle (target-style ground truth) |" in text
    assert "f" * 12 in text
    plain = tmp_path / "plain.md"
    plain.write_text("no markers\n")
    assert not report.update_readme(plain, results) and plain.read_text() == "no markers\n"


@pytest.mark.parametrize("settings", [dict(), dict(mode="sdedit", strength=1.0, steps=4),
                                      dict(mode="inversion", steps=3, warm_start="off"),
                                      dict(mode="inversion", steps=4, refine=0),
                                      dict(mode="inversion", steps=3, refine=2),
                                      dict(mode="inversion", steps=2, refine=0, warm_start="off"),
                                      dict(mode="sdedit", steps=2, guidance=1.0)])
def test_unet_calls_counts_what_transfer_runs(settings):
    models = transfer.load_models(CKPT, teacher=True)
    seen = []                                 # windows in each batch (the song has one)
    models.ldm.unet.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    wave = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    transfer.transfer(wave, SR, "rock", models=models, progress=False, **settings)
    assert sum(seen) == speed.unet_calls(models, **settings)


@pytest.mark.skipif(not (CKPT / "ldm.pt").is_file(), reason="no committed checkpoints")
def test_inversion_round_trips_run_the_committed_paired_ldm():
    models = transfer.load_models(CKPT, teacher=True)
    g = torch.Generator().manual_seed(0)
    split = metrics.Split({(0, s): 0.1 * torch.randn(SR, generator=g) for s in models.styles[:2]},
                           models.styles[:2], "val")
    r = evaluate.inversion_round_trips(models, split, steps=2, seconds=1.0)
    assert {k: v["calls"] for k, v in r["rows"].items()} == {"off": 4, "previous": 3,
                                                             "extrapolate": 3}
    assert all(0 <= v["error"] < 1 for v in r["rows"].values()) and r["latents"] == 2
