"""Tests for the transfer baselines (baselines/cyclegan.py, unit.py, musicvae.py): shapes at
any length, the losses' closed forms, optimisation on a fixed batch, fp16 checkpoints, and
train() -> systems() end to end on a tiny synthetic dataset."""
import argparse
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import config
import data
import train
from baselines import cyclegan, musicvae, unit
from stft import LogMel

STYLES = ["piano", "rock", "strings"]


def _tiny_cfg():
    return config.Config(
        cyclegan=config.CycleGANConfig(channels=4, res_blocks=1, disc_channels=(4, 4, 4),
                                       steps=3, batch_size=2, clip_seconds=0.5),
        unit=config.UNITConfig(channels=4, res_blocks=2, disc_channels=(4, 4, 4), steps=3,
                               batch_size=2, clip_seconds=0.5),
        musicvae=config.MusicVAEConfig(hidden=16, latent_channels=4, style_dim=4, steps=3,
                                       batch_size=4, warmup=1, clip_seconds=0.5))


def _models():
    torch.manual_seed(0)
    c = _tiny_cfg()
    return (cyclegan.CycleGAN(c.cyclegan.channels, c.cyclegan.res_blocks),
            unit.UNIT(c.unit.channels, c.unit.res_blocks),
            musicvae.build(c.musicvae, len(STYLES), 128))


def _translate(model, spec):
    if isinstance(model, musicvae.MusicVAE):
        return model.transfer(spec, torch.zeros(len(spec), dtype=torch.long),
                              torch.ones(len(spec), dtype=torch.long))
    return model.translate(spec, to_b=True)


@pytest.mark.parametrize("frames", [5, 61, 64, 131])
def test_translation_keeps_shape_at_any_length(frames):
    spec = torch.randn(2, 1, 128, frames)
    for model in _models():
        with torch.no_grad():
            assert _translate(model.eval(), spec).shape == spec.shape


def test_cycle_and_identity_losses_vanish_for_identity_generators():
    identity = cyclegan.CycleGAN(4, 1)
    identity.G_ab, identity.G_ba = nn.Identity(), nn.Identity()
    disc = cyclegan.discriminators((4, 4, 4))
    a, b = torch.randn(2, 1, 128, 16), torch.randn(2, 1, 128, 16)
    _, (fake_a, fake_b), logs = cyclegan.generator_loss(identity, disc, a, b)
    assert logs["cycle"] == 0 and logs["identity"] == 0
    assert torch.equal(fake_a, b) and torch.equal(fake_b, a)
    _, _, logs = cyclegan.generator_loss(_models()[0], disc, a, b)   # a real generator is not
    assert logs["cycle"] > 0 and logs["identity"] > 0


def test_lsgan_closed_forms():
    ones, zeros = torch.ones(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    assert cyclegan.lsgan_d_loss(ones, zeros).item() == 0            # perfect discriminator
    assert cyclegan.lsgan_g_loss(ones).item() == 0                   # perfect forgery
    # D outputs 0.5 everywhere: 0.5 (0.5 - 1)^2 + 0.5 (0.5)^2 = 0.25.
    assert cyclegan.lsgan_d_loss(ones / 2, ones / 2).item() == pytest.approx(0.25)
    assert cyclegan.lsgan_g_loss(zeros).item() == 1


def test_unit_kl_is_mean_square_and_shared_layers_are_shared():
    mu = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    assert unit.kl_term(mu).item() == pytest.approx((1 + 4 + 0 + 9) / 4)
    model = _models()[1]
    spec = torch.randn(1, 1, 128, 12)
    # Both encoders end in the same module, so perturbing it moves both styles' codes.
    before = [model.encode(spec, s).detach() for s in "ab"]
    with torch.no_grad():
        model.shared_encoder.block[0].bias.add_(1.0)
    after = [model.encode(spec, s) for s in "ab"]
    assert all(not torch.allclose(x, y) for x, y in zip(before, after))


def _loss(model, disc, a, b):
    torch.manual_seed(1)            # the same reparameterisation noise at every evaluation
    if isinstance(model, musicvae.MusicVAE):
        return musicvae.vae_loss(model, torch.cat([a, b]), torch.tensor([0, 0, 1, 1]))
    loss_fn = cyclegan.generator_loss if isinstance(model, cyclegan.CycleGAN) else \
        unit.generator_loss
    return loss_fn(model, disc, a, b)[0]


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    a, b = torch.randn(2, 1, 128, 24), torch.randn(2, 1, 128, 24) + 1.0
    disc = cyclegan.discriminators((4, 4, 4)).requires_grad_(False)   # held fixed
    for model in _models():
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        first = _loss(model, disc, a, b).item()
        for _ in range(8):
            opt.zero_grad()
            _loss(model, disc, a, b).backward()
            opt.step()
        assert _loss(model, disc, a, b).item() < 0.9 * first, type(model).__name__


def test_fp16_checkpoint_round_trip(tmp_path):
    cfg = _tiny_cfg()
    gan, vae = _models()[0], _models()[2]
    spec = torch.randn(1, 1, 128, 40)
    config.save_checkpoint(tmp_path / "baselines" / "cyclegan.pt", step=1,
                           model=cyclegan.half_weights(gan), config=config.config_to_dict(cfg))
    config.save_checkpoint(tmp_path / "baselines" / "musicvae.pt", step=1,
                           model=cyclegan.half_weights(vae), config=config.config_to_dict(cfg),
                           styles=STYLES)
    loaded_gan, _ = cyclegan.load_pair_model(tmp_path, "cyclegan", lambda c: cyclegan.CycleGAN(
        c.cyclegan.channels, c.cyclegan.res_blocks), cfg.audio)
    loaded_vae, styles = musicvae.load(tmp_path, cfg.audio)
    assert styles == STYLES
    for model, loaded in ((gan, loaded_gan), (vae.eval(), loaded_vae)):
        rounded = model.half().float()               # what the fp16 file holds
        with torch.no_grad():
            assert torch.equal(_translate(rounded, spec), _translate(loaded, spec))
    other = dataclasses.replace(cfg.audio, hop=128)
    with pytest.raises(ValueError, match="front end"):
        musicvae.load(tmp_path, other)


def _dataset(root, seconds=1.0, sr=16000):
    """Two files per style and split: each style its own timbre (harmonics) of random notes."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    for split in data.SPLITS:
        for k, style in enumerate(STYLES):
            for i in range(2):
                f0 = 220 * 2 ** (rng.integers(12) / 12)
                wave = sum(np.sin(2 * np.pi * f0 * (h + 1) * t) / (h + 1) ** (2 - k)
                           for h in range(4))
                data.write_wav(root / split / style / f"p{i}.wav", 0.1 * wave, sr)


@pytest.mark.parametrize("name", ["cyclegan", "unit", "musicvae"])
def test_train_then_systems_end_to_end(tmp_path, name):
    _dataset(tmp_path / "data")
    args = argparse.Namespace(data=str(tmp_path / "data"), device="cpu", steps=None,
                              batch_size=None, seed=0, resume=False, bf16=False,
                              ckpt_dir=str(tmp_path / "ckpt"), runs=str(tmp_path / "runs"),
                              val_every=100, save_every=100)
    kit = argparse.Namespace(train_loop=train.train_loop, options=train.LoopOptions.from_args,
                             audio_splits=train.audio_splits,
                             setup_distributed=train.setup_distributed)
    cfg = _tiny_cfg()
    module = {"cyclegan": cyclegan, "unit": unit, "musicvae": musicvae}[name]
    logmel = LogMel(**dataclasses.asdict(cfg.audio))
    assert module.systems(args.ckpt_dir, cfg, logmel, STYLES, {}) == {}   # nothing trained yet
    module.train(args, cfg, kit)
    assert (tmp_path / "ckpt" / "baselines" / f"{name}.pt").is_file()
    (row, system), = module.systems(args.ckpt_dir, cfg, logmel, STYLES, {}).items()
    assert "(baseline)" in row and "Griffin-Lim" in row
    expected = {("piano", "rock"), ("rock", "piano")} if name != "musicvae" else \
        {(s, t) for s in STYLES for t in STYLES if s != t}
    assert system.pairs == expected
    wave = torch.randn(8001) * 0.1                                    # odd length
    out = system(wave, "rock", "piano", "p0")
    assert out.shape == wave.shape and torch.isfinite(out).all()
