"""The autoregressive baseline vocoders (baselines/wavenet.py, baselines/wavernn.py):
mu-law, causality, fast sampling against full recomputation, learnability, checkpoints."""
from dataclasses import asdict

import numpy as np
import pytest
import torch

import config
import data
from baselines import wavenet, wavernn
from stft import LogMel

MU = wavenet.MU
N_MELS, HOP = 8, 16


def tiny_wavenet(seed=0):
    torch.manual_seed(seed)
    return wavenet.WaveNet(N_MELS, HOP, channels=8, skip_channels=8, cond_dim=8, cycles=2,
                           layers_per_cycle=3)               # dilations 1, 2, 4, 1, 2, 4


def tiny_wavernn(seed=0):
    torch.manual_seed(seed)
    return wavernn.WaveRNN(N_MELS, HOP, hidden=16, embed_dim=8, cond_dim=8, fc_dim=16)


def random_spec(batch, frames, seed=1):
    return torch.randn(batch, 1, N_MELS, frames, generator=torch.Generator().manual_seed(seed))


def companded(x):
    """WaveNet eq. 1 in numpy, float64: the reference the quantiser is checked against."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)


# ---------------------------------------------------------------- mu-law
def test_mu_law_round_trip_within_quantisation_error():
    x = torch.cat([torch.rand(10_000) * 2 - 1, torch.tensor([-1.0, 0.0, 1.0, 1e-4, -1e-4])])
    classes = wavenet.mu_law_encode(x)
    assert classes.min() >= 0 and classes.max() <= MU
    assert classes[-5:-2].tolist() == [0, 128, 255]
    decoded = wavenet.mu_law_decode(classes)
    # Uniform quantisation of f(x) in steps of 2 / mu: at most half a step away in f ...
    assert np.abs(companded(x) - companded(decoded)).max() <= 1 / MU + 1e-6
    # ... which is far finer near 0 (where mu-law spends its levels) than near 1.
    # Near 0 the levels are ln(1 + mu) / mu^2 = 8.5e-5 apart, near 1 (1 + mu) times wider.
    assert (x - decoded)[x.abs() < 1e-3].abs().max() < 1.2e-4
    assert (x - decoded).abs().max() < 0.025
    # Every level decodes and encodes back to itself.
    levels = torch.arange(MU + 1)
    assert torch.equal(wavenet.mu_law_encode(wavenet.mu_law_decode(levels)), levels)


def test_frame_index_nearest_centre():
    idx = wavenet.frame_index(0, 5 * HOP, HOP, frames=5)
    assert idx[0] == 0 and idx[HOP // 2 - 1] == 0 and idx[HOP // 2] == 1
    assert idx[-1] == 4                                     # clamped to the last frame
    assert torch.equal(wavenet.frame_index(HOP, 3, HOP, 5), idx[HOP:HOP + 3])


# ---------------------------------------------------------------- WaveNet
def test_wavenet_is_causal_with_its_receptive_field():
    model = tiny_wavenet().eval()
    R = model.receptive_field()                             # 1 + 2 (1 + 2 + 4) = 15
    assert R == 15
    spec = random_spec(1, 8)
    prev = torch.randint(0, MU + 1, (1, 100))
    k = 40
    changed = prev.clone()
    changed[0, k] = (prev[0, k] + 100) % (MU + 1)
    with torch.no_grad():
        a, b = model(prev, spec), model(changed, spec)      # (1, 256, 100)
    diff = (a - b).abs().amax(dim=1)[0]                     # (100,)
    # prev[k] is sample k - 1: it moves the logits of samples k .. k + R - 1 and no others
    # (the far end only through the product of every layer's past tap: weakly, but not 0).
    assert diff[:k].max() == 0 and diff[k + R:].max() == 0
    assert diff[k] > 1e-3 and diff[k + R - 1] > 0


def test_wavenet_queued_sampling_equals_full_recomputation():
    model = tiny_wavenet().eval()
    spec, length = random_spec(2, 4), 50                    # the queues wrap several times
    classes, logits = model.generate(spec, length, torch.Generator().manual_seed(0),
                                     keep_logits=True)
    assert classes.shape == (2, length) and logits.shape == (2, MU + 1, length)
    prev = torch.cat([wavenet.silence(2)[:, None], classes[:, :-1]], dim=1)
    with torch.no_grad():
        naive = torch.stack([model(prev[:, :t + 1], spec)[..., t] for t in range(length)], -1)
    torch.testing.assert_close(logits, naive, atol=1e-5, rtol=1e-5)


def test_generation_is_deterministic_given_generator():
    model, spec = tiny_wavenet().eval(), random_spec(2, 3)
    a = model.generate(spec, 30, torch.Generator().manual_seed(5))
    b = model.generate(spec, 30, torch.Generator().manual_seed(5))
    c = model.generate(spec, 30, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---------------------------------------------------------------- WaveRNN
def test_wavernn_cell_sampling_equals_teacher_forced_gru():
    model = tiny_wavernn().eval()
    spec, length = random_spec(3, 4), 40
    classes, logits = model.generate(spec, length, torch.Generator().manual_seed(0),
                                     keep_logits=True)
    prev = torch.cat([wavenet.silence(3)[:, None], classes[:, :-1]], dim=1)
    with torch.no_grad():
        forced = model(prev, spec)                          # (3, 256, 40), one nn.GRU call
    torch.testing.assert_close(logits, forced, atol=1e-5, rtol=1e-5)


def test_wavernn_cell_shares_the_gru_parameters():
    model = tiny_wavernn()
    cell = model.cell()
    assert cell.weight_hh is model.gru.weight_hh_l0 and cell.bias_ih is model.gru.bias_ih_l0


# ---------------------------------------------------------------- training
@pytest.mark.parametrize("make", [tiny_wavenet, tiny_wavernn])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(make):
    model = make()
    t = torch.arange(1200) / 16000
    wave = torch.stack([0.3 * torch.sin(2 * np.pi * 440 * t), 0.2 * torch.sin(2 * np.pi * 660 * t)])
    spec = random_spec(2, 1200 // HOP + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss():
        torch.manual_seed(0)                                # the same window every time
        return wavenet.window_loss(model, wave, spec, window=400)

    first = loss().item()
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert first > 5.0                                      # about ln 256 = 5.55 at the start
    assert loss().item() < 0.8 * first


# ---------------------------------------------------------------- checkpoints and scoring
def tiny_config():
    return config.Config(
        audio=config.AudioConfig(n_fft=64, hop=HOP, n_mels=N_MELS),
        wavenet=config.WaveNetConfig(channels=8, skip_channels=8, cond_dim=8, cycles=1,
                                     layers_per_cycle=3),
        wavernn=config.WaveRNNConfig(hidden=16, embed_dim=8, cond_dim=8, fc_dim=16))


def write_tiny_dataset(root, styles=("a", "b"), pieces=("0", "1"), samples=800):
    (root / "metadata.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "metadata.json").write_text("{}")
    rng = np.random.default_rng(0)
    for s in styles:
        for p in pieces:
            (root / "test" / s).mkdir(parents=True, exist_ok=True)
            data.write_wav(root / "test" / s / f"{p}.wav",
                           (0.1 * rng.standard_normal(samples)).astype(np.float32), 16000)


@pytest.mark.parametrize("module", [wavenet, wavernn])
def test_checkpoint_round_trip_and_batched_systems(module, tmp_path):
    cfg, name = tiny_config(), module.__name__.split(".")[-1]
    logmel = LogMel(**asdict(cfg.audio))
    assert module.systems(tmp_path, cfg, logmel, ["a", "b"], {}) == {}  # nothing trained yet
    torch.manual_seed(0)
    model = module.build(cfg)
    write_tiny_dataset(tmp_path / "data")
    weights = {k: v.half() for k, v in model.state_dict().items()}
    config.save_checkpoint(tmp_path / "baselines" / f"{name}.pt", model=weights,
                           config=config.config_to_dict(cfg), styles=["a", "b"])
    loaded = module.from_checkpoint(config.load_checkpoint(tmp_path / "baselines" / f"{name}.pt",
                                                           "baselines"))
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, weights[k].float()), k

    waves = data.load_paired_split(tmp_path / "data", "test", 16000)[0]
    rows = module.vocoder_systems(name.capitalize(), name, module.from_checkpoint, tmp_path, cfg,
                                  logmel, waves, seconds=0.01)
    (row, system), = rows.items()
    assert "first 0.01 s" in row
    outputs = [system(waves[k], k[1], k[1], k[0]) for k in sorted(waves)]
    for out, share in outputs:
        assert out.shape == (160,) and out.abs().max() <= 1 and share > 0
    # All four clips were sampled in one batch: every output reports a quarter of its time.
    assert len({share for _, share in outputs}) == 1
    other, share = system(torch.randn(800) * 0.1, "a", "a", "0")     # not the cached clip
    assert other.shape == (160,) and not torch.equal(other, outputs[0][0])
    # By default the whole clip is scored, and the row says nothing about a cut.
    (row, system), = module.systems(tmp_path, cfg, logmel, ["a", "b"], waves).items()
    assert "first" not in row and system(waves["0", "a"], "a", "a", "0")[0].shape == (800,)
