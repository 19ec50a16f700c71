import pytest
import torch
import torch.nn.functional as F

from mmnet_plugin.models import ContextualLearner, FactorizedConvBlock
from mmnet_plugin.models.factorized import episode_depthwise_conv


def test_contextual_learner_packed_batch_equals_one_by_one():
    torch.manual_seed(0)
    learner = ContextualLearner(dm=6, dr=5, channels=4, filter_init_scale=1.0)
    keys = torch.randn(3, 7, 6)
    n_used = torch.tensor([2, 7, 4])
    keys = keys * (torch.arange(7) < n_used.unsqueeze(1)).unsqueeze(2)  # unused slots are zero
    w = learner(keys, n_used)
    assert w.shape == (3, 4, 1, 3, 3)
    for b in range(3):
        one = learner(keys[b : b + 1, : n_used[b]], n_used[b : b + 1])
        assert torch.allclose(w[b], one[0], atol=1e-6)
    # the encoding reads the slots in order: reversing them changes W
    rev = keys[1:2].flip(1)
    assert not torch.allclose(learner(rev, n_used[1:2]), w[1:2])


def test_contextual_learner_init():
    learner = ContextualLearner(dm=6, dr=5, channels=4, filter_init_scale=0.0)
    assert learner.dw == 36
    assert learner.tp.bias.abs().max() <= 1 / 3 + 1e-6  # default depthwise-conv init range
    w = learner(torch.randn(2, 3, 6), torch.tensor([3, 2]))
    assert torch.allclose(w[0], w[1])  # scale 0: the bias filter for every episode
    assert torch.allclose(w[0].flatten(), learner.tp.bias)
    with pytest.raises(ValueError):
        ContextualLearner(dm=6, dr=5, channels=4, filter_init_scale=-1.0)


def test_grouped_depthwise_conv_equals_per_episode_convs():
    torch.manual_seed(0)
    counts = [2, 5, 1]
    x = torch.randn(sum(counts), 4, 5, 5)
    filters = torch.randn(3, 4, 1, 3, 3)
    out = episode_depthwise_conv(x, filters, counts)
    start = 0
    for b, n in enumerate(counts):
        ref = F.conv2d(x[start : start + n], filters[b], padding=1, groups=4)
        assert torch.allclose(out[start : start + n], ref, atol=1e-5)
        start += n
    with pytest.raises(ValueError):
        episode_depthwise_conv(x, filters, [2, 5])


def test_factorized_block_shapes_and_modes():
    x = torch.randn(6, 8, 3, 3)
    block = FactorizedConvBlock(8, 4)
    assert block.depthwise is None
    out = block(x, torch.randn(2, 4, 1, 3, 3), [4, 2])
    assert out.shape == (6, 4, 1, 1)
    with pytest.raises(ValueError, match="predicted"):
        block(x)
    static = FactorizedConvBlock(8, 4, static_filters=True)
    assert static(x).shape == (6, 4, 1, 1)
    with pytest.raises(ValueError, match="static"):
        static(x, torch.randn(1, 4, 1, 3, 3))


@pytest.mark.parametrize("input_norm,static_bias", [(False, True), (True, False)])
def test_sync_free_lstm_equals_the_packed_one(input_norm, static_bias):
    """The padded two-layout LSTM (no host sync, for GPUs) gives the packed LSTM's numbers,
    and its gradients."""
    torch.manual_seed(0)
    packed = ContextualLearner(dm=6, dr=5, channels=4, input_norm=input_norm, static_bias=static_bias, sync_free=False)
    padded = ContextualLearner(dm=6, dr=5, channels=4, input_norm=input_norm, static_bias=static_bias, sync_free=True)
    padded.load_state_dict(packed.state_dict())
    n_used = torch.tensor([2, 7, 1, 4])
    keys = torch.randn(4, 7, 6) * (torch.arange(7) < n_used.unsqueeze(1)).unsqueeze(2)
    keys_a, keys_b = keys.clone().requires_grad_(), keys.clone().requires_grad_()
    wa, wb = packed(keys_a, n_used), padded(keys_b, n_used)
    assert torch.allclose(wa, wb, atol=1e-6)
    wa.square().sum().backward()
    wb.square().sum().backward()
    assert torch.allclose(keys_a.grad, keys_b.grad, atol=1e-6)
    assert (keys_b.grad[0, 2:] == 0).all()  # unused slots do not take part
    assert (static_bias and packed.tp.bias is not None) or (not static_bias and packed.tp.bias is None)
