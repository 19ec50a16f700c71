import pytest
import torch
from torch import nn

from mmnet_plugin.models import Conv4, conv_block, embedding_dim


def test_conv_block_structure_and_shape():
    block = conv_block(3, 8)
    kinds = [type(m) for m in block]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d]
    assert block[0].kernel_size == (3, 3) and block[0].padding == (1, 1)
    assert block(torch.randn(2, 3, 11, 11)).shape == (2, 8, 5, 5)


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
