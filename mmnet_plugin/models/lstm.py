"""The final hidden states of a one-layer bidirectional ``nn.LSTM`` over ragged sequences, with
a hand-written backward pass through time, for the CPU.

``nn.LSTM`` on the CPU records every time step in autograd: each step's backward computes and
accumulates a full ``[4 Dr, Dr]`` gradient of the recurrent weights, which for MM-Net's
``Dr = 512`` is most of the cost of the contextual learner. Here the input projection of all
steps is one matrix product, the recurrence runs without autograd, and the backward pass keeps
the per-step gate gradients and forms the weight gradients with one matrix product per
direction. The numbers are those of ``nn.LSTM`` on a packed sequence (the same gates, in
PyTorch's order ``i, f, g, o``, and the same weights: the module's own parameters), so
checkpoints and results do not depend on which is used.

Under autocast the matrix products run in the autocast dtype and the cell arithmetic in float32
(float64 inputs stay float64).
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
from torch import nn

__all__ = ["bilstm_final_states"]


class _Recurrence(torch.autograd.Function):
    """One direction: ``h`` after each sequence's last step, given the input projections."""

    @staticmethod
    def forward(ctx: Any, xw: torch.Tensor, w_hh: torch.Tensor, active: torch.Tensor) -> torch.Tensor:  # noqa: D102
        b, t_max, four_h = xw.shape
        hidden = four_h // 4
        w = w_hh.to(xw.dtype)
        cell = torch.promote_types(xw.dtype, torch.float32)  # float32 under bf16 autocast, float64 stays
        h = xw.new_zeros(b, hidden, dtype=cell)
        c = torch.zeros_like(h)
        h_prev, c_prev, gates, tanh_c = [], [], [], []
        for t in range(t_max):
            z = xw[:, t].to(cell) + (h.to(w.dtype) @ w.t()).to(cell)
            i, f = torch.sigmoid(z[:, :hidden]), torch.sigmoid(z[:, hidden : 2 * hidden])
            g, o = torch.tanh(z[:, 2 * hidden : 3 * hidden]), torch.sigmoid(z[:, 3 * hidden :])
            c_new = f * c + i * g
            tc = torch.tanh(c_new)
            h_prev.append(h)
            c_prev.append(c)
            gates.append(torch.cat([i, f, g, o], dim=1))
            tanh_c.append(tc)
            m = active[:, t].unsqueeze(1)
            h = torch.where(m, o * tc, h)
            c = torch.where(m, c_new, c)
        ctx.save_for_backward(
            w, active, torch.stack(h_prev, 1), torch.stack(c_prev, 1), torch.stack(gates, 1), torch.stack(tanh_c, 1)
        )
        ctx.w_dtype, ctx.x_dtype = w_hh.dtype, xw.dtype
        return h.to(xw.dtype)

    @staticmethod
    def backward(ctx: Any, grad_h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, None]:  # noqa: D102
        w, active, h_prev, c_prev, gates, tanh_c = ctx.saved_tensors
        b, t_max, hidden = h_prev.shape
        dh = grad_h.to(h_prev.dtype)
        dc = torch.zeros_like(dh)
        dz_all = []
        for t in reversed(range(t_max)):
            m = active[:, t].unsqueeze(1)
            gt = gates[:, t]
            i, f, g, o = gt[:, :hidden], gt[:, hidden : 2 * hidden], gt[:, 2 * hidden : 3 * hidden], gt[:, 3 * hidden :]
            tc = tanh_c[:, t]
            dct = dc + dh * o * (1 - tc * tc)
            dz = torch.cat(
                [dct * g * i * (1 - i), dct * c_prev[:, t] * f * (1 - f), dct * i * (1 - g * g), dh * tc * o * (1 - o)],
                dim=1,
            )
            dz = torch.where(m, dz, torch.zeros_like(dz))
            dz_all.append(dz)
            # an inactive step passed h and c through unchanged: so does its gradient
            dh = torch.where(m, (dz.to(w.dtype) @ w).to(dh.dtype), dh)
            dc = torch.where(m, dct * f, dc)
        dz = torch.stack(dz_all[::-1], 1)  # [B, T, 4H]
        grad_w = dz.reshape(-1, 4 * hidden).t() @ h_prev.reshape(-1, hidden)  # one product for all steps
        return dz.to(ctx.x_dtype), grad_w.to(ctx.w_dtype), None


def bilstm_final_states(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``h_n[0] + h_n[1]`` of ``lstm`` run on the packed sequences ``x[b, :lengths[b]]``.

    Args:
        lstm: a one-layer, bidirectional, ``batch_first`` ``nn.LSTM`` with biases.
        x: ``[B, T, D]`` inputs, each sequence left-aligned (padding after ``lengths[b]``).
        lengths: ``[B]`` sequence lengths, each at least 1 (on any device).

    Returns:
        ``[B, H]``: the sum of the forward direction's last hidden state (after step
        ``lengths[b] - 1``) and the backward direction's (after step 0, having read the sequence
        from its end).

    Raises:
        ValueError: for an LSTM of another shape or a length below 1 or above ``T``.
    """
    if lstm.num_layers != 1 or not lstm.bidirectional or not lstm.batch_first or not lstm.bias:
        raise ValueError("bilstm_final_states needs a one-layer, bidirectional, batch_first nn.LSTM with biases")
    if getattr(lstm, "proj_size", 0):
        raise ValueError("bilstm_final_states does not support proj_size")
    b, t_max, _ = x.shape
    lengths = lengths.to(x.device, torch.long)
    if int(lengths.min()) < 1 or int(lengths.max()) > t_max:
        raise ValueError(f"lengths must lie in 1..{t_max}; got {lengths.tolist()}")
    t_used = int(lengths.max())
    x = x[:, :t_used]
    pos = torch.arange(t_used, device=x.device).unsqueeze(0)
    active = pos < lengths.unsqueeze(1)  # [B, T]
    # the backward direction reads each sequence from its last item: reverse it in place
    rev_index = (lengths.unsqueeze(1) - 1 - pos).clamp_min(0)
    x_rev = x.gather(1, rev_index.unsqueeze(2).expand_as(x))
    out = []
    for xs, sfx in ((x, ""), (x_rev, "_reverse")):
        w_ih = getattr(lstm, f"weight_ih_l0{sfx}")
        bias = getattr(lstm, f"bias_ih_l0{sfx}") + getattr(lstm, f"bias_hh_l0{sfx}")
        xw = nn.functional.linear(xs, w_ih, bias)  # every step's input projection in one product
        out.append(_Recurrence.apply(xw, getattr(lstm, f"weight_hh_l0{sfx}"), active))
    return out[0] + out[1]
