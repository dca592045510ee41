"""GuideDiff: shapes, schedules, determinism, learnability, and no clicks at frame rate."""
import math
from pathlib import Path

import pytest
import torch

import config
import guidediff
from stft import LogMel, stft

CKPT = Path(__file__).resolve().parent.parent / "checkpoints" / "guidediff.pt"


def tiny(seed=0):
    torch.manual_seed(seed)
    return guidediff.GuideDiff(LogMel(n_mels=32, n_fft=256, hop=64), dim=32, hidden=64,
                               layers=2, guide_layers=1, emb_dim=16)


@pytest.mark.parametrize("n", [4000, 4001, 4097])
def test_vocode_shapes(n):
    model = tiny().eval()
    wave = 0.1 * torch.randn(2, n)
    spec = model.logmel(wave)                                   # (2, 1, 32, T)
    out = model.vocode(spec, noise_levels=[1.0, 0.3], length=n)
    assert out.shape == (2, n) and torch.isfinite(out).all()
    default = model.vocode(spec, noise_levels=[1.0])
    assert default.shape == (2, model.hop * (spec.shape[-1] - 1))


def test_vocode_same_generator_same_output():
    model = tiny().eval()
    spec = model.logmel(0.1 * torch.randn(1, 3000))
    a = model.vocode(spec, noise_levels=[1.0, 0.5, 0.1], generator=torch.Generator().manual_seed(3))
    b = model.vocode(spec, noise_levels=[1.0, 0.5, 0.1], generator=torch.Generator().manual_seed(3))
    c = model.vocode(spec, noise_levels=[1.0, 0.5, 0.1], generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stored_schedule_is_used():
    model = tiny().eval()
    model.schedules = {2: [1.0, 0.2]}
    spec = model.logmel(0.1 * torch.randn(1, 3000))
    a = model.vocode(spec, steps=2, generator=torch.Generator().manual_seed(0))
    b = model.vocode(spec, noise_levels=[1.0, 0.2], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="no stored schedule"):
        model.vocode(spec, steps=8)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_candidate_schedules(k):
    for levels in guidediff.candidate_schedules(k):
        assert len(levels) == k and levels[0] == 1.0
        assert all(a > b > 0 for a, b in zip(levels, levels[1:]))


def test_training_loss_falls():
    """A few Adam steps on one clip must lower the loss: the model can learn."""
    model = tiny()
    wave = torch.sin(2 * math.pi * 440 * torch.arange(4096) / 16000)[None].repeat(4, 1) * 0.3
    spec = model.logmel(wave)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 3)
        loss = guidediff.training_loss(model, wave, spec, model.logmel, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])


def test_checkpoint_round_trip(tmp_path):
    cfg = config.Config()
    cfg.guidediff = config.GuideDiffConfig(dim=32, hidden=64, layers=2, guide_layers=1)
    model = guidediff.build(cfg)
    config.save_checkpoint(tmp_path / "g.pt", model=model.state_dict(),
                           config=config.config_to_dict(cfg), schedules={2: [1.0, 0.1]},
                           default_steps=2)
    loaded = guidediff.from_checkpoint(config.load_checkpoint(tmp_path / "g.pt", "guidediff"))
    assert loaded.schedules == {2: [1.0, 0.1]} and loaded.default_steps == 2
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def frame_rate_flux_ratio(wave, period, hop=16):
    """Spectral flux at a fine hop, folded by `period` samples: the largest mean flux at
    one phase of the period over the median phase. A click every `period` samples makes
    one phase stand out; a seamless signal gives about 1."""
    mag = stft(wave, 128, hop).abs()                               # (F, frames)
    flux = (mag[:, 1:] - mag[:, :-1]).clamp_min(0).sum(0)          # (frames - 1,)
    per = period // hop
    flux = flux[: len(flux) // per * per].reshape(-1, per).mean(0)  # (per,)
    return (flux.max() / flux.median()).item()


def sine_sweep(seconds=6.0, sr=16000, f0=100.0, f1=4000.0):
    t = torch.arange(int(seconds * sr)) / sr
    k = math.log(f1 / f0) / seconds
    return 0.3 * torch.sin(2 * math.pi * f0 * (torch.exp(k * t) - 1) / k)


def test_flux_detector_can_fail():
    wave = sine_sweep()
    assert frame_rate_flux_ratio(wave, 256) < 1.3
    clicks = wave.clone()
    clicks[::256] += 0.5                                           # a click every frame
    assert frame_rate_flux_ratio(clicks, 256) > 2.0


@pytest.mark.skipif(not CKPT.is_file(), reason="no committed GuideDiff checkpoint")
def test_no_clicks_at_frame_rate():
    """The committed model on a long sine sweep: no periodic flux spikes at the STFT hop
    (the decoder's frame rate); there are no chunks, the whole signal is decoded at once."""
    model = guidediff.from_checkpoint(config.load_checkpoint(CKPT, "guidediff"))
    wave = sine_sweep()
    spec = model.logmel(wave[None])
    out = model.vocode(spec, steps=model.default_steps, generator=torch.Generator().manual_seed(0),
                       length=len(wave))[0]
    assert frame_rate_flux_ratio(out, model.hop) < 1.3


def test_mel_projection_moves_towards_the_guide():
    """Rounds of mel_projection bring a wrong waveform's log-mel closer to the guide's,
    monotonically on average, and leave a waveform that already fits nearly alone."""
    logmel = LogMel(n_mels=32, n_fft=256, hop=64)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(8000) / 16000
    target = (0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(8000, generator=g))[None]
    spec = logmel(target)
    wrong = 0.1 * torch.randn(1, 8000, generator=g)
    errors = [(logmel(guidediff.mel_projection(wrong, spec, logmel, k)) - spec).abs().mean()
              for k in (0, 1, 4)]
    assert errors[0] > 2 * errors[1] and errors[2] < errors[1]
    kept = guidediff.mel_projection(target, spec, logmel, 2)
    assert (logmel(kept) - spec).abs().mean() < 0.05 * errors[0]
    assert kept.shape == target.shape
    # The momentum (default 0.9) gets further in the same rounds than plain alternation.
    plain, fast = [(logmel(guidediff.mel_projection(wrong, spec, logmel, 8, momentum=m))
                    - spec).abs().mean() for m in (0.0, 0.9)]
    assert fast < 0.9 * plain


def test_mlp_head_grows_from_a_linear_head_model():
    """A trained linear-head GuideDiff loads into one with the MLP head (config.load_weights
    grow=True, as train.py --init does): the MLP starts at zero, so the output is unchanged;
    the reverse direction, a checkpoint with parts the model lacks, is refused."""
    old = tiny(seed=1).eval()
    torch.nn.init.normal_(old.head.weight, std=0.05)           # a 'trained' head
    grown = guidediff.GuideDiff(old.logmel, dim=32, hidden=64, layers=2, guide_layers=1,
                                emb_dim=16, head_hidden=48)
    _, new = config.load_weights(grown, {"model": old.state_dict()}, "guidediff", grow=True)
    assert new and all(k.startswith("head_mlp.") for k in new)
    spec = old.logmel(0.1 * torch.randn(1, 3000))
    a = old.vocode(spec, noise_levels=[1.0, 0.4], generator=torch.Generator().manual_seed(0))
    b = grown.vocode(spec, noise_levels=[1.0, 0.4], generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    torch.nn.init.normal_(grown.head_mlp[-1].weight, std=0.05)  # once trained, it matters
    c = grown.vocode(spec, noise_levels=[1.0, 0.4], generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="does not fit"):
        config.load_weights(tiny(), {"model": grown.state_dict()}, "guidediff", grow=True)
    with pytest.raises(ValueError, match="does not fit"):
        config.load_weights(grown, {"model": old.state_dict()}, "guidediff")


def heard_guides():
    """A tiny GuideDiff that records the log-mel guide of every call: (model, list)."""
    model, heard = tiny(), []
    forward = model.forward

    def spy(x_s, spec, s):
        heard.append(spec.clone())
        return forward(x_s, spec, s)
    model.forward = spy
    return model, heard


def test_training_is_guided_by_round_trips_against_the_true_wave():
    """With round_trip = 1 the model hears the autoencoder's log-mel, while the loss is
    scored against the wave's own; with 0 (or no autoencoder) it hears the wave's own."""
    model, heard = heard_guides()

    class Blur(torch.nn.Module):            # a stand-in autoencoder: a known, lossy round trip
        def forward(self, spec):
            return torch.nn.functional.avg_pool2d(spec, 3, 1, 1), None
    wave = torch.randn(2, 4096) * 0.1
    spec = model.logmel(wave)
    for share, expected in ((1.0, Blur()(spec)[0]), (0.0, spec)):
        c = config.GuideDiffConfig(round_trip=share)
        loss = guidediff.GuideDiffTraining(model, model.logmel, c, None, Blur())(wave)
        torch.testing.assert_close(heard[-1], expected)
        assert torch.isfinite(loss)
    guidediff.GuideDiffTraining(model, model.logmel, config.GuideDiffConfig(), None, None)(wave)
    torch.testing.assert_close(heard[-1], spec)


def test_transfer_guides_replace_the_guide_and_skip_the_recording_chain():
    """Items marked guided hear their transfer guide and are scored against the clean wave
    (the recording chain is not applied to them); the others as before."""
    model, heard = heard_guides()

    class Loud(torch.nn.Module):            # a stand-in recording chain: a known change
        def forward(self, wave, generator=None):
            return 3.0 * wave
    wave = torch.randn(2, 4096) * 0.1
    spec = model.logmel(wave)
    given = torch.randn_like(spec)
    c = config.GuideDiffConfig(round_trip=0.0)
    loss = guidediff.GuideDiffTraining(model, model.logmel, c, Loud())(
        wave, given, torch.tensor([True, False]))
    torch.testing.assert_close(heard[-1][0], given[0])
    torch.testing.assert_close(heard[-1][1], model.logmel(3.0 * wave)[1])
    assert torch.isfinite(loss)
