"""The shared U-Net's keyword conditioning: y= labels, context= cross-attention tokens, control= residuals."""

import pytest
import torch

from genlab.nn import UNet


def _net(**kw):
    torch.manual_seed(0)
    net = UNet(1, 8, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, **kw)
    for p in net.parameters():  # zero-initialised output layers would hide every effect
        torch.nn.init.normal_(p, std=0.1)
    return net.eval()


def test_context_tokens_change_the_output_and_masked_tokens_do_not():
    net = _net(context_dim=6)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    ctx = torch.randn(2, 5, 6)
    a = net(x, t, context=ctx)
    assert not torch.allclose(a, net(x, t, context=torch.randn(2, 5, 6)))
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    changed = ctx.clone()
    changed[:, 3:] = torch.randn(2, 2, 6)  # only tokens the mask hides differ
    assert torch.allclose(net(x, t, context=ctx, context_mask=mask), net(x, t, context=changed, context_mask=mask), atol=1e-6)
    with pytest.raises(ValueError, match="cross-attention"):
        net(x, t)


def test_control_residuals_match_skip_channels_and_zero_control_changes_nothing():
    net = _net()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    sizes = [8, 8, 4, 4]  # conv_in, level-0 block, downsample, level-1 block; then the middle (4x4)
    assert net.skip_channels == [8, 8, 8, 16, 16]
    zero = [torch.zeros(2, c, s, s) for c, s in zip(net.skip_channels, [*sizes, 4])]
    assert torch.allclose(net(x, t), net(x, t, control=zero), atol=1e-6)
    bumped = [z.clone() for z in zero]
    bumped[-1] += 1.0
    assert not torch.allclose(net(x, t), net(x, t, control=bumped))
    with pytest.raises(ValueError, match="control needs 5 residuals"):
        net(x, t, control=zero[:2])


def test_labels_are_keyword_only():
    net = _net(num_classes=3)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 500])
    assert not torch.allclose(net(x, t, y=torch.tensor([0, 1])), net(x, t, y=torch.tensor([2, 2])))
    with pytest.raises(TypeError):
        net(x, t, torch.tensor([0, 1]))


@pytest.mark.parametrize("base", [8, 16, 32])
def test_narrow_levels_still_see_time_and_labels(base):
    """A GroupNorm group of one channel (instance norm) right after the embedding's per-channel shift would
    erase it: narrow U-Nets ignored t and y. Groups now hold >= 4 channels, so both change the output."""
    torch.manual_seed(0)
    net = UNet(1, 8, base, [1], 1, [], 0.0, num_classes=10).eval()
    for p in net.parameters():  # the output conv starts at zero: give every weight a random value
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 1, 8, 8)
    t = torch.tensor([10, 10])
    with torch.no_grad():
        ref = net(x, t, y=torch.tensor([0, 0]))
        assert (ref - net(x, t, y=torch.tensor([5, 5]))).abs().max() > 1e-3
        assert (ref - net(x, torch.tensor([900, 900]), y=torch.tensor([0, 0]))).abs().max() > 1e-3
    assert all(m.num_channels // m.num_groups >= min(4, m.num_channels)
               for m in net.modules() if isinstance(m, torch.nn.GroupNorm))
