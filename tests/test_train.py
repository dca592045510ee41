"""Tests for the shared training loop in train.py: exact resume, DDP gradients, batches."""
import json
import os
import socket
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import config
import train


class NoisyRegression(torch.utils.data.Dataset):
    """x -> y = x @ w + noise; __getitem__ draws from torch's global RNG like AudioFolder."""

    def __init__(self, n=40, dim=5, noisy=True):
        g = torch.Generator().manual_seed(0)
        self.x, self.w = torch.randn(n, dim, generator=g), torch.randn(dim, 2, generator=g)
        self.noisy = noisy

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        noise = 0.1 * torch.randn(2) if self.noisy else torch.zeros(2)
        return self.x[i], self.x[i] @ self.w + noise


@dataclass
class TinyConfig:
    steps: int = 6
    batch_size: int = 8
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup: int = 2
    ema: float = 0.9
    grad_accum: int = 2


def _args(tmp_path, **kw):
    return train.LoopOptions(**dict(dict(seed=3, ckpt_dir=str(tmp_path / "ckpt"),
                                         runs=str(tmp_path / "runs"), val_every=100,
                                         save_every=100), **kw))


def _loss(model, batch, step):
    x, y = batch
    dropout = torch.nn.functional.dropout(model(x), 0.2)   # the loss's own randomness
    return torch.nn.functional.mse_loss(dropout, y)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.SiLU(), torch.nn.Linear(16, 2))


def test_resume_matches_uninterrupted(tmp_path):
    ds, c = NoisyRegression(), TinyConfig()
    full = _model()
    ema_full = train.train_loop(full, _loss, ds, c, _args(tmp_path / "a"), "toy")

    calls = {"n": 0}

    def crash_after_three_steps(model, batch, step):
        calls["n"] += 1
        if calls["n"] > 3 * c.grad_accum:
            raise KeyboardInterrupt
        return _loss(model, batch, step)

    part = _model()
    with pytest.raises(KeyboardInterrupt):
        train.train_loop(part, crash_after_three_steps, ds, c, _args(tmp_path / "b", save_every=3),
                         "toy")
    state = config.load_checkpoint(tmp_path / "b" / "ckpt" / "toy.train.pt", "toy")
    assert state["step"] == 3
    resumed = _model()                      # fresh weights: everything comes from the file
    ema_resumed = train.train_loop(resumed, _loss, ds, c, _args(tmp_path / "b", resume=True),
                                   "toy")
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema_full.state_dict().values(), ema_resumed.state_dict().values()):
        assert torch.equal(a, b)
    # And the run did move: the result is not the initial weights.
    assert not torch.equal(full[0].weight, _model()[0].weight)
    ckpt = config.load_checkpoint(tmp_path / "a" / "ckpt" / "toy.pt", "toy")
    assert ckpt["step"] == c.steps and set(ckpt["model"]) == set(full.state_dict())


def test_init_starts_from_a_checkpoint_and_lr_overrides(tmp_path):
    """--init: a fine-tune starts from a finished STAGE.pt's (half-precision) weights with a
    fresh optimiser; --lr replaces the preset's peak rate; another model's file is refused."""
    ds, c = NoisyRegression(), TinyConfig()
    first = train.train_loop(_model(), _loss, ds, c, _args(tmp_path / "a"), "toy")
    path = tmp_path / "a" / "ckpt" / "toy.pt"
    start = config.load_checkpoint(path, "toy")["model"]
    seen = {}

    def record_start(model, batch, step):
        if step == 0 and "w" not in seen:
            seen["w"] = model[0].weight.detach().clone()
        return _loss(model, batch, step)
    tuned = _model()
    assert not torch.equal(tuned[0].weight, start["0.weight"].float())
    train.train_loop(tuned, record_start, ds, c, _args(tmp_path / "b", init=str(path), lr=1e-3),
                     "toy")
    assert torch.equal(seen["w"], start["0.weight"].float())
    lrs = [json.loads(line)["lr"] for line in open(tmp_path / "b" / "runs" / "toy" / "log.jsonl")]
    assert max(lrs) <= 1e-3 < c.lr
    assert not torch.equal(tuned[0].weight, first[0].weight)
    wide = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))
    with pytest.raises(ValueError, match="does not fit"):
        train.train_loop(wide, _loss, ds, c, _args(tmp_path / "c", init=str(path)), "toy")


def test_ema_warm_up_forgets_the_initialisation(tmp_path):
    """With decay 0.999 the EMA of a 20-step run would still be 98% initial weights; the
    warm-up min(decay, (1 + step) / (10 + step)) keeps only prod of the early decays."""
    assert [train.ema_decay(s, 0.999) for s in (0, 1, 10)] == [0.1, 2 / 11, 11 / 20]
    assert train.ema_decay(10 ** 6, 0.999) == 0.999
    ds, c = NoisyRegression(), TinyConfig(ema=0.999, steps=20, grad_accum=1)
    init = _model()
    model = _model()
    ema = train.train_loop(model, _loss, ds, c, _args(tmp_path), "toy")
    share = np.prod([train.ema_decay(s, c.ema) for s in range(c.steps)])
    assert share < 0.01                     # 0.999 ** 20 = 0.98 without the warm-up
    moved = (model[0].weight - init[0].weight).norm()
    assert moved > 0.05
    # The EMA sits near the trained weights, not near the initial ones.
    assert (ema[0].weight - model[0].weight).norm() < 0.6 * moved


def test_get_batch_is_pure_and_covers_an_epoch():
    ds = NoisyRegression(n=32)
    a = train.get_batch(ds, 5, 8, seed=1)
    b = train.get_batch(ds, 5, 8, seed=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    seen = torch.cat([train.get_batch(ds, n, 8, seed=1)[0] for n in range(4)])
    assert len({tuple(r.tolist()) for r in seen}) == 32          # one epoch, no repeats


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    r, w, device = train.setup_distributed("cpu")
    assert (r, w) == (rank, world)
    model = _model()
    net = torch.nn.parallel.DistributedDataParallel(model)
    train.accumulate_gradients(net, _plain_loss, NoisyRegression(noisy=False), 0, 2, 4, 3, r, w,
                               device, torch.autocast("cpu", enabled=False))
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], out)
    dist.barrier()                      # neither rank tears gloo down under the other
    dist.destroy_process_group()
    # About one run in 40 aborted at interpreter exit ("terminate called without an active
    # exception", from a gloo thread's static destructor); skip that teardown.
    os._exit(0)


def _plain_loss(model, batch, step):
    x, y = batch
    return torch.nn.functional.mse_loss(model(x), y)


def test_two_process_ddp_matches_one_process(tmp_path):
    """2 gloo ranks x 4 items x 2 micro-batches == 1 process x 8 items x 2 micro-batches."""
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)
    model = _model()
    train.accumulate_gradients(model, _plain_loss, NoisyRegression(noisy=False), 0, 2, 8, 3, 0,
                               1, torch.device("cpu"), torch.autocast("cpu", enabled=False))
    for g_ddp, p in zip(ddp_grads, model.parameters()):
        assert torch.allclose(g_ddp, p.grad, atol=1e-6), (g_ddp - p.grad).abs().max()
    assert any(g.abs().sum() > 0 for g in ddp_grads)


@pytest.mark.skipif(not (train.Path(__file__).resolve().parents[1] / "checkpoints" /
                         "autoencoder.pt").is_file(), reason="no autoencoder checkpoint")
def test_ldm_stage_trains_a_paired_model_that_transfer_runs(tmp_path):
    """The ldm stage end to end on a tiny built-in dataset: paired items (cached latents,
    reused by a second run), a checkpoint transfer.py loads, and a transfer through the
    source channels."""
    import shutil

    import data
    import transfer
    root = train.Path(__file__).resolve().parents[1]
    data.build_dataset(tmp_path / "d", pieces=3, seconds=3.0, seed=1, workers=1,
                       soundfonts=["timgm6mb"])
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(root / "checkpoints" / "autoencoder.pt", ckpt / "autoencoder.pt")
    argv = ["--stage", "ldm", "--data", str(tmp_path / "d"), "--ckpt-dir", str(ckpt),
            "--runs", str(tmp_path / "runs"), "--steps", "1", "--batch-size", "2", "--bf16"]
    train.main(argv)
    cached = sorted((tmp_path / "d" / "cache").iterdir())
    assert len(cached) == 2 * (1 + config.LDMConfig().versions)     # train and val splits
    stamps = [p.stat().st_mtime_ns for p in cached]
    train.main(argv + ["--init", str(ckpt / "ldm.pt")])
    assert [p.stat().st_mtime_ns for p in sorted((tmp_path / "d" / "cache").iterdir())] == stamps
    models = transfer.load_models(ckpt)
    assert models.ldm.paired and models.ldm.unet.input_conv.in_channels == 8
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    out, sr = transfer.transfer(wave, 16000, "rock", models=models, steps=2, progress=False)
    assert sr == 16000 and out.shape == wave.shape and np.isfinite(out).all()
    # Distillation: a 2-step student of the ldm, then a 1-step student of that one, which
    # transfer.py uses by default (the teacher on request); a student of another ldm.pt is
    # refused.
    base = argv[2:]
    train.main(["--stage", "distill", *base, "--student-steps", "2"])
    with pytest.raises(SystemExit):
        train.main(["--stage", "distill", *base, "--student-steps", "2", "--init",
                    str(ckpt / "distill.pt")])                   # its teacher takes 2, not 4
    train.main(["--stage", "distill", *base, "--student-steps", "1", "--init",
                str(ckpt / "distill.pt")])
    models = transfer.load_models(ckpt)
    assert models.student_steps == 1 and models.student.guidance_embed is not None
    assert (ckpt / "distill.pt").stat().st_size < 0.5 * (ckpt / "ldm.pt").stat().st_size
    out, _ = transfer.transfer(wave, 16000, "rock", models=models, progress=False)
    assert out.shape == wave.shape and np.isfinite(out).all()
    assert transfer.load_models(ckpt, teacher=True).student is None
    # GuideDiff learns from the student's transfers too: a guide per train piece, cached.
    train.main(["--stage", "guidediff", *base])
    guides = [p for p in (tmp_path / "d" / "cache").iterdir() if p.name.startswith("guides-")]
    pieces = json.loads((tmp_path / "d" / "metadata.json").read_text())["splits"]["train"]
    assert len(guides) == 1 and len(torch.load(guides[0], weights_only=True)["guides"]) == \
        len(pieces)
    assert transfer.load_models(ckpt).vocoder is not None
    shutil.copy(ckpt / "distill.pt", tmp_path / "distill.pt")
    train.main(argv + ["--init", str(ckpt / "ldm.pt")])         # a new ldm.pt
    with pytest.raises(ValueError, match="distilled from another ldm.pt"):
        transfer.load_models(ckpt)


@pytest.mark.skipif(not (train.Path(__file__).resolve().parents[1] / "checkpoints" /
                         "autoencoder.pt").is_file(), reason="no autoencoder checkpoint")
def test_decoder_only_fine_tune_keeps_the_latent_space(tmp_path, capsys):
    """--decoder-only: the encoder's weights and latent scale come back bit for bit (so the
    LDM trained on its latents stays valid), the decoder moves, learning from transfers'
    latents too (cached, two per train piece, and one per val piece for a val measure);
    without --init it is refused."""
    import shutil

    import data
    root = train.Path(__file__).resolve().parents[1]
    data.build_dataset(tmp_path / "d", pieces=3, seconds=5.0, seed=1, workers=1,
                       soundfonts=["timgm6mb"])
    (tmp_path / "ckpt").mkdir()
    for name in ("ldm.pt", "distill.pt"):
        shutil.copy(root / "checkpoints" / name, tmp_path / "ckpt" / name)
    base = ["--stage", "autoencoder", "--data", str(tmp_path / "d"), "--ckpt-dir",
            str(tmp_path / "ckpt"), "--runs", str(tmp_path / "runs"), "--steps", "2",
            "--batch-size", "2", "--lr", "1e-3", "--decoder-only"]
    with pytest.raises(SystemExit) as e:
        train.main(base)
    assert e.value.code == 2 and "--init" in capsys.readouterr().err
    not_a_share = base + ["--transfer-latents", "1.0", "--init", "x.pt"]
    no_decoder_only = [a for a in base if a != "--decoder-only"] + ["--transfer-latents", "0.2"]
    for bad in (not_a_share, no_decoder_only):
        with pytest.raises(SystemExit) as e:
            train.main(bad)
        assert e.value.code == 2 and "--transfer-latents" in capsys.readouterr().err
    start = config.load_checkpoint(root / "checkpoints" / "autoencoder.pt", "autoencoder")
    train.main(base + ["--init", str(root / "checkpoints" / "autoencoder.pt")])
    tuned = config.load_checkpoint(tmp_path / "ckpt" / "autoencoder.pt", "autoencoder")
    encoder = [k for k in start["model"] if k.startswith("encoder.")]
    decoder = [k for k in start["model"] if k.startswith("decoder.")]
    assert encoder and decoder and set(tuned["model"]) == set(start["model"])
    assert all(torch.equal(tuned["model"][k], start["model"][k]) for k in encoder)
    assert tuned["latent_scale"] == start["latent_scale"]
    assert not all(torch.equal(tuned["model"][k], start["model"][k]) for k in decoder)
    caches = sorted(p.name for p in (tmp_path / "d" / "cache").iterdir())
    assert len(caches) == 2 and all(p.startswith("latents-") for p in caches)
    train_latents = torch.load(tmp_path / "d" / "cache" / [p for p in caches if "-x2" in p][0],
                               weights_only=True)["latents"]
    meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert len(train_latents) == 2 * len(meta["splits"]["train"])
    assert all(z.shape[:2] == (4, 32) for z in train_latents.values())
    log = [json.loads(line) for line in open(tmp_path / "runs" / "autoencoder" / "log.jsonl")]
    assert np.isfinite(log[-1]["val_transfer_l1"])
    # the train latents were transferred from recordings of the sources, not the renders
    args = train.parse_args(base + ["--init", "x.pt"])
    audio = data.AudioFolder(args.data, "train", config.preset("tiny").audio.sample_rate, 2.0)
    clean = train.cached_transfers(args, audio, 0, "cpu", "latents", ("ldm.pt", "distill.pt"),
                                   per_piece=2, key=train.encoder_bytes(start))
    assert sorted(clean) == sorted(train_latents)
    assert not any(torch.allclose(clean[i], train_latents[i], atol=1e-3) for i in clean)
    # --fix-decoder-norms: the decoder's GroupNorms folded into FixedNorms, then trained;
    # the encoder and scale stay, the stored config says so; only with --decoder-only
    fixed_dir = tmp_path / "ckptF"
    shutil.copytree(tmp_path / "ckpt", fixed_dir, ignore=shutil.ignore_patterns("autoenc*"))
    with pytest.raises(SystemExit) as e:
        train.main([a for a in base if a != "--decoder-only"] + ["--fix-decoder-norms"])
    assert e.value.code == 2 and "--fix-decoder-norms" in capsys.readouterr().err
    train.main(base + ["--init", str(root / "checkpoints" / "autoencoder.pt"),
                       "--fix-decoder-norms", "--ckpt-dir", str(fixed_dir)])
    fixed = config.load_checkpoint(fixed_dir / "autoencoder.pt", "autoencoder")
    assert config.config_from_dict(fixed["config"]).autoencoder.decoder_norm == "fixed"
    assert all(torch.equal(fixed["model"][k], start["model"][k]) for k in encoder)
    assert fixed["latent_scale"] == start["latent_scale"]
    assert any(k.endswith(".scale") for k in fixed["model"] if k.startswith("decoder."))
    assert train.ae_lib.from_checkpoint(fixed).decoder_norm == "fixed"
