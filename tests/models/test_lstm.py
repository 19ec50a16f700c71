"""The hand-written bi-LSTM equals nn.LSTM on packed sequences: outputs and every gradient."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mmnet_plugin.models.lstm import bilstm_final_states


def _reference(lstm, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    _, (h_n, _) = lstm(packed)
    return h_n[0] + h_n[1]


@pytest.mark.parametrize("lengths", [[5, 1, 9, 3], [7], [4, 4, 4]])
def test_outputs_and_gradients_equal_nn_lstm_on_packed_sequences(lengths):
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 16, batch_first=True, bidirectional=True)
    x = torch.randn(len(lengths), 10, 12, requires_grad=True)
    n = torch.tensor(lengths)
    weights = torch.randn(len(lengths), 16)

    ours = bilstm_final_states(lstm, x, n)
    grads = torch.autograd.grad((ours * weights).sum(), [x, *lstm.parameters()])
    ref = _reference(lstm, x, n)
    ref_grads = torch.autograd.grad((ref * weights).sum(), [x, *lstm.parameters()])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    names = ["x"] + [name for name, _ in lstm.named_parameters()]
    for name, a, b in zip(names, grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert grads[0][0, max(lengths) :].abs().sum() == 0  # padding gets no gradient


def test_bf16_autocast_stays_close_to_float32():
    torch.manual_seed(1)
    lstm = nn.LSTM(32, 32, batch_first=True, bidirectional=True)
    x, n = torch.randn(3, 6, 32), torch.tensor([6, 2, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = bilstm_final_states(lstm, x, n)
    torch.testing.assert_close(low.float(), _reference(lstm, x, n), rtol=0.05, atol=0.05)


def test_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="one-layer, bidirectional"):
        bilstm_final_states(nn.LSTM(4, 4, batch_first=True), torch.zeros(1, 2, 4), torch.tensor([2]))
    with pytest.raises(ValueError, match="lengths must lie in 1..2"):
        lstm = nn.LSTM(4, 4, batch_first=True, bidirectional=True)
        bilstm_final_states(lstm, torch.zeros(1, 2, 4), torch.tensor([0]))
