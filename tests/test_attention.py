"""Tests for attention.py: the written-out attention against PyTorch's fused kernel."""
import pytest
import torch

from attention import Attention, SpatialTransformer, attention_weights


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("cross", [False, True])
def test_written_out_equals_fused(dtype, tol, cross):
    torch.manual_seed(0)
    attn = Attention(24, 16 if cross else None, heads=3, dim_head=8).to(dtype)
    x = torch.randn(4, 11, 24, dtype=dtype)
    context = torch.randn(4, 7, 16, dtype=dtype) if cross else None
    M = 7 if cross else 11
    mask = torch.rand(4, M) > 0.4            # ragged masks, one row fully masked
    mask[0] = True
    mask[1] = False
    for m in (None, mask):
        attn.fused = False
        slow = attn(x, context, m)
        attn.fused = True
        fast = attn(x, context, m)
        assert torch.allclose(slow, fast, atol=tol, rtol=tol)
        assert torch.isfinite(slow).all()


def test_masked_key_has_no_influence_and_rows_sum_to_one():
    torch.manual_seed(1)
    attn = Attention(16, 16, heads=2, dim_head=8)
    x, context = torch.randn(2, 5, 16), torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 3] = False
    out = attn(x, context, mask)
    context2 = context.clone()
    context2[:, 3] += 10 * torch.randn(2, 16)
    assert torch.allclose(out, attn(x, context2, mask), atol=1e-6)
    assert not torch.allclose(out, attn(x, context2), atol=1e-3)
    q, k = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 6, 8)
    w = attention_weights(q, k, mask)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2, 5)) and (w[..., 3] == 0).all()


def test_self_attention_is_permutation_equivariant():
    torch.manual_seed(2)
    attn = Attention(16, heads=2, dim_head=8)
    x = torch.randn(1, 9, 16)
    perm = torch.randperm(9)
    assert torch.allclose(attn(x)[:, perm], attn(x[:, perm]), atol=1e-6)


@pytest.mark.parametrize("hw", [(5, 7), (8, 3)])
def test_spatial_transformer_shape_and_identity_at_init(hw):
    torch.manual_seed(3)
    block = SpatialTransformer(32, context_dim=12, heads=2, dim_head=8, depth=2)
    x, context = torch.randn(2, 32, *hw), torch.randn(2, 4, 12)
    assert torch.equal(block(x, context), x)            # zero-initialised output projection
    torch.nn.init.normal_(block.proj_out.weight)
    out = block(x, context)
    assert out.shape == x.shape and not torch.allclose(out, x)
