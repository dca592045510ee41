"""Tests for autoencoder.py: shapes at any length, the KL term, the losses' wiring."""
import pytest
import torch

import autoencoder as A


def _model():
    torch.manual_seed(0)
    return A.Autoencoder(1, channels=(8, 16, 16), latent_channels=4, num_res_blocks=1)


@pytest.mark.parametrize("frames", [61, 64, 127, 251])
def test_shapes_for_any_length(frames):
    model = _model().eval()
    spec = torch.randn(2, 1, 128, frames)
    posterior = model.encode(spec)
    assert posterior.mean.shape == (2, 4, 32, -(-frames // 4))
    assert model.decode(posterior.mode(), length=frames).shape == spec.shape
    recon, _ = model(spec)
    assert recon.shape == spec.shape


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 16, 32, 1), (3, 8, 1, 12)])
def test_subpixel_upsample_is_nearest_then_conv(shape):
    """Upsample.forward (one stride-2 transposed conv at the low resolution) against its definition,
    nearest-neighbour x2 then the 3x3 conv, in value and in gradient."""
    g = torch.Generator().manual_seed(sum(shape))
    up = A.Upsample(shape[1]).double()
    with torch.no_grad():
        up.conv.weight.copy_(torch.randn(up.conv.weight.shape, generator=g, dtype=torch.float64))
        up.conv.bias.copy_(torch.randn(shape[1], generator=g, dtype=torch.float64))
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    fast, plain = up(x), up.plain(x)
    assert fast.shape == (shape[0], shape[1], 2 * shape[2], 2 * shape[3])
    assert (fast - plain).abs().max() < 1e-10
    probe = torch.randn(fast.shape, generator=g, dtype=torch.float64)
    grads = [torch.autograd.grad((y * probe).sum(), [x, up.conv.weight, up.conv.bias])
             for y in (up(x), up.plain(x))]
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-9 * (1 + b.abs().max())


def test_kl_zero_for_standard_normal_and_closed_form():
    moments = torch.zeros(3, 8, 4, 5)
    assert torch.allclose(A.DiagonalGaussian(moments).kl(), torch.zeros(3), atol=1e-6)
    g = torch.Generator().manual_seed(1)
    mean, logvar = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    q = A.DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    # KL(N(m, s^2) || N(0, 1)) = log(1/s) + (s^2 + m^2) / 2 - 1/2, summed over dimensions.
    s = torch.exp(0.5 * logvar)
    expected = (torch.log(1 / s) + (s ** 2 + mean ** 2) / 2 - 0.5).flatten(1).sum(1)
    assert torch.allclose(q.kl(), expected, atol=1e-5)


def test_sample_statistics():
    mean, logvar = torch.full((1, 2, 1, 1), 1.5), torch.full((1, 2, 1, 1), -1.0)
    q = A.DiagonalGaussian(torch.cat([mean, logvar], dim=1).expand(20000, -1, -1, -1))
    z = q.sample(torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 1.5) < 0.01
    assert abs(z.std().item() - torch.exp(torch.tensor(-0.5)).item()) < 0.01
    assert torch.equal(q.mode(), q.mean)


def test_multiscale_spectral_loss():
    x = torch.randn(2, 1, 32, 40, requires_grad=True)
    assert A.multiscale_spectral_loss(x, x).item() == 0
    y = x.detach() + 0.1 * torch.randn_like(x)
    loss = A.multiscale_spectral_loss(y, x)
    loss.backward()
    assert loss.item() > 0 and x.grad.abs().sum() > 0


def test_adversarial_terms_move_only_their_own_side():
    model, disc = _model(), A.PatchDiscriminator(channels=(8, 8, 8))
    spec = torch.randn(2, 1, 128, 32)
    g = torch.Generator().manual_seed(3)
    loss, _ = A.autoencoder_loss(model, spec, discriminator=disc, adv_weight=0.5,
                                 generator=g)
    loss.backward()
    d_grads = [p.grad.clone() for p in disc.parameters()]
    ae_grads = [p.grad.clone() for p in model.parameters()]
    # (a) the discriminator's gradient is the hinge d-loss's alone.
    for p in list(disc.parameters()) + list(model.parameters()):
        p.grad = None
    recon, _ = model(spec, torch.Generator().manual_seed(3))
    A.hinge_d_loss(disc(spec), disc(recon.detach())).backward()
    for a, p in zip(d_grads, disc.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)
    # (b) the autoencoder's gradient includes the generator's adversarial term.
    for p in list(disc.parameters()) + list(model.parameters()):
        p.grad = None
    plain, _ = A.autoencoder_loss(model, spec, generator=torch.Generator().manual_seed(3))
    plain.backward()
    assert any(not torch.allclose(a, p.grad) for a, p in zip(ae_grads, model.parameters()))


def test_bf16_autocast_runs_close_to_fp32():
    model = _model().eval()
    spec = torch.randn(1, 1, 128, 40)
    ref = model(spec)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(spec)[0].float()
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_latent_scale_is_inverse_std_of_means():
    model = _model().eval()
    specs = [torch.randn(2, 1, 128, 16) for _ in range(3)]
    means = torch.cat([model.encode(s).mean.flatten() for s in specs])
    assert A.latent_scale(model, specs) == pytest.approx(1 / means.std().item(), rel=1e-5)


def test_junction_gap_is_zero_only_for_a_decoder_without_global_statistics():
    """A decoder whose GroupNorms are removed is local, so decoding a latent whole and in two
    parts agrees exactly beyond the margin (its reach); with GroupNorm, whose statistics
    span the whole input, it does not, and the gap has a gradient to train that away. A
    margin below the reach shows the boundary's effect."""
    torch.manual_seed(1)
    model = _model()
    z = torch.randn(2, 4, 32, 32)
    gap = A.junction_gap(model, z, model.decode(z))
    assert gap > 1e-3
    gap.backward()
    assert model.decoder[0].weight.grad.abs().sum() > 0
    for module in model.decoder.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.GroupNorm):
                setattr(module, name, torch.nn.Identity())
    with torch.no_grad():
        whole = model.decode(z)
        assert all(A.junction_gap(model, z, whole) < 1e-6 for _ in range(8))
        assert A.junction_gap(model, z, whole, margin=1) > 1e-4


def test_folded_decoder_norms_reproduce_the_latent_they_were_folded_on():
    """fold_decoder_norms with one latent's statistics: FixedNorms whose scale and shift are
    that latent's GroupNorm normalisation, so its decoding is unchanged; another latent,
    whose own statistics differ, decodes differently. No GroupNorm is left in the decoder
    and the encoder is untouched."""
    torch.manual_seed(3)
    model = _model().eval()
    for gn in (m for m in model.decoder.modules() if isinstance(m, torch.nn.GroupNorm)):
        torch.nn.init.normal_(gn.weight, 1.0, 0.3), torch.nn.init.normal_(gn.bias, 0.0, 0.3)
    z, other = torch.randn(1, 4, 32, 24), 3 * torch.randn(1, 4, 32, 24) + 1
    spec = torch.randn(1, 1, 128, 24)
    with torch.no_grad():
        before, before_other, enc = model.decode(z), model.decode(other), model.encoder(spec)
        A.fold_decoder_norms(model, z)
        assert not any(isinstance(m, torch.nn.GroupNorm) for m in model.decoder.modules())
        assert sum(isinstance(m, A.FixedNorm) for m in model.decoder.modules()) == 7  # 3 x 2 + 1
        torch.testing.assert_close(model.decode(z), before, rtol=1e-4, atol=1e-4)
        assert (model.decode(other) - before_other).abs().max() > 0.1
        torch.testing.assert_close(model.encoder(spec), enc)


def test_fixed_norm_decoder_decodes_the_same_whole_or_in_parts_and_round_trips():
    """A decoder of FixedNorms (decoder_norm="fixed", as a folded one is stored) is purely
    convolutional: a latent decodes the same whole and cut in two beyond the reach, and
    chunked decoding (in_chunks) equals the whole. Its checkpoint loads back into the
    fixed build and is refused by the GroupNorm build."""
    import config
    torch.manual_seed(5)
    cfg = config.preset("tiny")
    cfg.autoencoder.channels, cfg.autoencoder.decoder_norm = (8, 16, 16), "fixed"
    model = A.Autoencoder(1, (8, 16, 16), 4, 1, "fixed")
    for m in model.decoder.modules():
        if isinstance(m, A.FixedNorm):
            torch.nn.init.normal_(m.scale, 1.0, 0.3), torch.nn.init.normal_(m.shift, 0.0, 0.3)
    z = torch.randn(2, 4, 32, 40)
    with torch.no_grad():
        whole = model.decode(z)
        assert whole.shape == (2, 1, 128, 160)
        assert all(A.junction_gap(model, z, whole) < 1e-6 for _ in range(8))
        torch.testing.assert_close(A.in_chunks(model.decode, z, 8, 6, 4), whole,
                                   rtol=1e-5, atol=1e-5)
    ckpt = dict(model=model.state_dict(), config=config.config_to_dict(cfg))
    loaded = A.from_checkpoint(ckpt)
    assert loaded.decoder_norm == "fixed"
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), whole)
    cfg.autoencoder.decoder_norm = "group"
    with pytest.raises(ValueError, match="does not fit"):
        A.from_checkpoint(dict(ckpt, config=config.config_to_dict(cfg)))
