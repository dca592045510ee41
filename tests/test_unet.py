"""Tests for unet.py: any latent size, time and style conditioning reach the output."""
import pytest
import torch

from unet import StyleEncoder, UNet, timestep_embedding


def _unet():
    torch.manual_seed(0)
    model = UNet(4, model_channels=16, channel_mult=(1, 2, 2), attention=(False, True, True),
                 context_dim=24, heads=2, dim_head=8)
    for p in model.parameters():            # leave the zero-initialised identity start
        torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.parametrize("shape", [(32, 16), (32, 21), (30, 7), (8, 64)])
def test_any_latent_size(shape):
    out = _unet()(torch.randn(2, 4, *shape), torch.tensor([3, 700]), torch.randn(2, 4, 24))
    assert out.shape == (2, 4, *shape) and torch.isfinite(out).all()


def test_time_and_context_change_the_output():
    model, x = _unet(), torch.randn(1, 4, 16, 16)
    c1, c2 = torch.randn(1, 4, 24), torch.randn(1, 4, 24)
    t = torch.tensor([100])
    base = model(x, t, c1)
    assert not torch.allclose(base, model(x, torch.tensor([900]), c1), atol=1e-4)
    assert not torch.allclose(base, model(x, t, c2), atol=1e-4)


def test_fused_and_written_out_attention_agree():
    model, x = _unet(), torch.randn(2, 4, 16, 12)
    t, c = torch.tensor([5, 500]), torch.randn(2, 4, 24)
    fused = model(x, t, c)
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = False
    assert torch.allclose(fused, model(x, t, c), atol=1e-5)


def test_timestep_embedding():
    e = timestep_embedding(torch.tensor([0, 10, 999]), 32)
    assert e.shape == (3, 32)
    assert torch.allclose(e[0, :16], torch.ones(16)) and torch.allclose(e[0, 16:], torch.zeros(16))


def test_style_encoder_token_space():
    torch.manual_seed(1)
    enc = StyleEncoder(n_styles=5, n_mels=128, tokens=3, context_dim=24, channels=(8, 8, 16))
    labels = enc.from_labels(torch.tensor([0, 4, 4]))
    assert labels.shape == (3, 3, 24) and torch.equal(labels[1], labels[2])
    for frames in (64, 101):
        assert enc.from_reference(torch.randn(2, 1, 128, frames)).shape == (2, 3, 24)
    assert enc.null_context(4).shape == (4, 3, 24)


def test_paired_model_sees_the_source_and_widening_keeps_the_old_function():
    """A paired LDM's U-Net takes the source as extra channels; started from an unpaired
    checkpoint (load_widened) it computes exactly what that one did, until trained."""
    import config
    import unet
    c = config.LDMConfig(model_channels=16, context_dim=24, heads=2, dim_head=8, paired=False)
    torch.manual_seed(1)
    old = unet.build_ldm(c, 3, 32)
    for p in old.parameters():
        torch.nn.init.normal_(p, std=0.1)
    paired = unet.build_ldm(config.LDMConfig(**{**c.__dict__, "paired": True}), 3, 32)
    assert paired.unet.input_conv.in_channels == 8 and paired.unet.out[-1].out_channels == 4
    new = unet.load_widened(paired, dict(model=old.state_dict()))
    assert not new
    x, src = torch.randn(2, 4, 8, 16), torch.randn(2, 4, 8, 16)
    t, ctx = torch.tensor([5, 900]), torch.randn(2, 4, 24)
    with torch.no_grad():
        torch.testing.assert_close(paired.unet(torch.cat([x, src], 1), t, ctx),
                                   old.unet(x, t, ctx))
        for p in paired.parameters():
            torch.nn.init.normal_(p, std=0.1)
        a = paired.unet(torch.cat([x, src], 1), t, ctx)
        b = paired.unet(torch.cat([x, torch.randn_like(src)], 1), t, ctx)
    assert not torch.allclose(a, b, atol=1e-4)             # the source reaches the output
    labels, ref = torch.tensor([0, 2]), torch.randn(2, 1, 32, 64)
    loss = paired(x, labels, ref, src)
    loss.backward()
    assert torch.isfinite(loss) and paired.unet.input_conv.weight.grad[:, 4:].abs().sum() > 0
