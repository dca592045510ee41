"""torch.compile (inductor) against eager: the compiled networks compute the same function.

float32, tiny random models; tolerance 1e-4 relative to the output's scale (inductor
reorders reductions and fuses arithmetic, so results differ in the last bits only)."""
import pytest
import torch

import guidediff
from stft import LogMel
from unet import UNet


def _close(a, b, tol=1e-4):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@torch.no_grad()
def test_compiled_unet_equals_eager():
    torch.manual_seed(0)
    model = UNet(4, model_channels=16, channel_mult=(1, 2), attention=(False, True),
                 context_dim=24, heads=2, dim_head=8).eval().requires_grad_(False)
    for p in model.parameters():            # leave the zero-initialised identity start
        torch.nn.init.normal_(p, std=0.2)
    compiled = torch.compile(model, dynamic=False)
    for seed in (1, 2):                     # the second call reuses the compiled graph
        g = torch.Generator().manual_seed(seed)
        x, c = torch.randn(3, 4, 16, 24, generator=g), torch.randn(3, 4, 24, generator=g)
        t = torch.randint(0, 1000, (3,), generator=g)
        eager = model(x, t, c)
        assert _close(compiled(x, t, c), eager)
    assert not _close(eager, model(x, t, torch.randn(3, 4, 24)))    # the check can fail


@torch.no_grad()
def test_compiled_guidediff_equals_eager():
    torch.manual_seed(0)
    model = guidediff.GuideDiff(LogMel(n_mels=32, n_fft=256, hop=64), dim=32, hidden=64,
                                layers=2, guide_layers=1, emb_dim=16).eval()
    torch.nn.init.normal_(model.head.weight, std=0.1)
    guide = torch.compile(model.guide, dynamic=True)
    denoise = torch.compile(model.denoise, dynamic=True)
    for n in (3000, 4100):                  # two lengths, one dynamic graph
        g = torch.Generator().manual_seed(n)
        wave = 0.1 * torch.randn(2, n, generator=g)
        spec, x_s = model.logmel(wave), torch.randn(2, n, generator=g)
        level = torch.tensor([1.0, 0.4])
        eager = model.denoise(x_s, model.guide(spec), level)
        assert _close(denoise(x_s, guide(spec), level), eager)
