import pytest
import torch
from torch import nn

from mmnet_plugin.models import Conv4, conv_block, embedding_dim
from mmnet_plugin.models.backbone import LayoutConv2d


def test_conv_block_structure_and_shape():
    block = conv_block(3, 8)
    kinds = [type(m) for m in block]
    assert kinds == [LayoutConv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU] and isinstance(block[0], nn.Conv2d)
    assert block[0].kernel_size == (3, 3) and block[0].padding == (1, 1)
    assert block(torch.randn(2, 3, 11, 11)).shape == (2, 8, 5, 5)


def test_pool_before_relu_equals_the_written_order_in_value_and_gradient():
    # conv_block pools before rectifying; the result must be Conv-4's conv, BN, ReLU, pool
    torch.manual_seed(0)
    block = conv_block(3, 8)
    written = nn.Sequential(block[0], block[1], nn.ReLU(), nn.MaxPool2d(2))
    x = torch.randn(6, 3, 10, 10, requires_grad=True)
    out = block(x)
    ref = written(x)
    assert torch.equal(out, ref)
    assert (ref == 0).any() and (ref > 0).any()  # the ReLU really cuts something here
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, [x, block[0].weight, block[1].weight], g)
    grads_ref = torch.autograd.grad(ref, [x, block[0].weight, block[1].weight], g)
    for a, b in zip(grads, grads_ref):
        assert torch.equal(a, b)  # bit-identical, not merely close


@pytest.mark.parametrize("channels,size,dz", [(1, 28, 64), (3, 84, 1600), (1, 16, 64)])
def test_conv4_embedding_dims(channels, size, dz):
    net = Conv4(in_channels=channels)
    assert len(net.blocks) == 4
    out = net(torch.randn(2, channels, size, size))
    assert out.shape == (2, dz)
    assert embedding_dim(channels, size) == dz == net.embedding_dim(size)


def test_trunk_then_head_is_forward():
    net = Conv4().eval()
    x = torch.randn(3, 1, 28, 28)
    h = net.trunk(x)
    assert h.shape == (3, 64, 3, 3)
    assert torch.allclose(net.head(h), net(x))


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="too small"):
        embedding_dim(1, 15)
    with pytest.raises(ValueError, match="in_channels"):
        Conv4(in_channels=1)(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError):
        Conv4(in_channels=0)


@pytest.mark.parametrize("in_ch", [1, 3])
def test_layout_conv_equals_conv2d_in_value_and_gradient(in_ch):
    torch.manual_seed(0)
    plain = nn.Conv2d(in_ch, 8, 3, padding=1, bias=False)
    layout = LayoutConv2d(in_ch, 8, 3, padding=1, bias=False)
    layout.load_state_dict(plain.state_dict())
    x = torch.randn(4, in_ch, 9, 9)
    a, b = plain(x), layout(x)
    assert b.is_contiguous(memory_format=torch.channels_last)  # the point: NHWC on the CPU
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(layout.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    assert layout.weight.is_contiguous()  # stored as nn.Conv2d stores it: checkpoints unchanged
