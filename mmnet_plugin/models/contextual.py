"""MM-Net's contextual learner (paper section 3.4, Eq. 7): memory -> query-branch filters.

A bidirectional LSTM (hidden size ``Dr``) reads the used memory keys of each episode in
slot order (forward) and in reverse order (backward); the two final hidden states are
summed and mapped by ``Tp`` to the parameters ``W`` of the query branch: one 3x3 depthwise
filter per channel of the factorized fourth block (``64 * 3 * 3 = 576`` numbers per
episode for Conv-4). A batch of episodes is one packed sequence, so episodes with different
numbers of used slots run in a single LSTM call.

Initialisation (our choice; the paper states none). ``W = Tp.bias + Tp.weight @ h``:

* ``Tp.bias`` starts as a depthwise filter drawn like PyTorch's default ``Conv2d`` init
  (Kaiming-uniform, bound ``1/sqrt(k*k)``), the same init the static-filter ablation uses,
  so at step 0 every episode gets a reasonable ordinary depthwise convolution and early
  training looks like training a plain network.
* ``Tp.weight`` starts as PyTorch's default ``Linear`` init multiplied by
  ``filter_init_scale`` (default 1.0). The support-dependent part ``Tp.weight @ h`` is
  then already small: the LSTM reads unit-norm 512-d keys, so at step 0 ``h`` has an rms of
  about 0.03, and (measured on a default MMNet, 16 random 5-way episodes) ``W - Tp.bias``
  has an rms of 0.018 against 0.19 for the bias filter, with episodes differing by an rms of
  0.003. A smaller scale (0.1) shrinks the support-dependent part tenfold but also divides
  the gradient reaching the LSTM by ten, so we keep the default init. ``h`` is bounded by
  2 in magnitude, so the prediction cannot blow up the filters. (A 200-step synthetic
  sanity run, one seed each, gave 78.6 +- 2.3% with 1.0 and 82.5 +- 1.8% with 0.1 on
  held-out classes: not a clear difference; revisit on real data.)

That is the ``"paper"`` form (``MMNet(query_branch="paper")``). Measured since, it leaves
the learner almost no say: with unit-norm keys the LSTM state is small (rms 0.031 at
init) and only about 1.5% of each predicted filter depends on the support set, and static
filters scored the same as predicted ones. The ``"residual"`` form, MMNet's default, builds
the learner with ``input_norm=True`` (a LayerNorm on the keys before the LSTM, so it reads
unit-variance inputs whatever the key norm) and ``static_bias=False`` (``Tp`` without a
bias: every number of ``W`` is a function of the memory). In that form the filters feed a
residual branch that starts switched off (see :class:`~mmnet_plugin.models.MMNet`), so a
support-dependent ``W`` at step 0 cannot hurt the start of training.

The bi-LSTM runs either on the exact per-episode lengths (the CPU: with a hand-written backward
pass through time, :mod:`~mmnet_plugin.models.lstm`, equal to ``nn.LSTM`` on a packed sequence) or, on
other devices, on the padded batch without reading the lengths on the host: the forward
direction is read at each episode's last slot of the left-aligned keys, the backward
direction at the first slot of the same keys right-aligned (so it starts at the last used
slot), in one LSTM call over both layouts. Both give the same numbers; the second needs no
host synchronisation, which matters on a GPU where the step is launch-bound.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from .lstm import bilstm_final_states

__all__ = ["ContextualLearner", "default_depthwise_init"]


def default_depthwise_init(weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Fill ``weight`` in place like ``nn.Conv2d``'s default init of a depthwise 3x3 conv.

    ``kaiming_uniform_(a=sqrt(5))`` with fan-in ``kernel_size ** 2`` is uniform in
    ``+-1/sqrt(fan_in)``.
    """
    bound = 1.0 / math.sqrt(kernel_size * kernel_size)
    with torch.no_grad():
        weight.uniform_(-bound, bound)
    return weight


class ContextualLearner(nn.Module):
    """Bi-LSTM over the memory keys, then ``Tp``: predicted depthwise filters per episode.

    Args:
        dm: memory key size ``Dm`` (LSTM input size).
        dr: LSTM hidden size ``Dr``.
        channels: channels of the factorized block (one depthwise filter each).
        kernel_size: side of the depthwise filters.
        filter_init_scale: factor on ``Tp``'s default weight init (see module docstring).
        input_norm: LayerNorm the keys before the LSTM (the residual form).
        static_bias: give ``Tp`` a bias initialised as a default depthwise filter (the
            paper form); ``False``: no bias, ``W`` depends on the memory only.
        sync_free: how to run the LSTM: ``None`` (default) packed on the CPU and without
            host synchronisation elsewhere; ``True``/``False`` force one way (tests).

    Raises:
        ValueError: for non-positive sizes or a negative ``filter_init_scale``.
    """

    def __init__(
        self,
        dm: int,
        dr: int,
        channels: int,
        kernel_size: int = 3,
        filter_init_scale: float = 1.0,
        input_norm: bool = False,
        static_bias: bool = True,
        sync_free: Optional[bool] = None,
    ) -> None:
        super().__init__()
        for name, v in (("dm", dm), ("dr", dr), ("channels", channels), ("kernel_size", kernel_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if not float(filter_init_scale) >= 0:
            raise ValueError(f"filter_init_scale must be >= 0; got {filter_init_scale!r}")
        self.dm, self.dr = int(dm), int(dr)
        self.channels, self.kernel_size = int(channels), int(kernel_size)
        self.filter_init_scale = float(filter_init_scale)
        self.input_norm = bool(input_norm)
        self.static_bias = bool(static_bias)
        self.sync_free = sync_free
        #: On the CPU, run the bi-LSTM with :func:`~mmnet_plugin.models.lstm.bilstm_final_states` (the
        #: same numbers as ``nn.LSTM`` on the packed keys, with the weight gradients formed once
        #: per direction instead of once per slot); ``False``: ``nn.LSTM`` on a packed sequence.
        self.fused = True
        self.norm: Optional[nn.LayerNorm] = nn.LayerNorm(self.dm) if self.input_norm else None
        self.lstm = nn.LSTM(self.dm, self.dr, batch_first=True, bidirectional=True)
        self.tp = nn.Linear(self.dr, self.channels * self.kernel_size**2, bias=self.static_bias)
        with torch.no_grad():
            self.tp.weight.mul_(self.filter_init_scale)
            if self.tp.bias is not None:
                default_depthwise_init(self.tp.bias, self.kernel_size)

    @property
    def dw(self) -> int:
        """Number of predicted parameters per episode, ``Dw = channels * k * k``."""
        return self.channels * self.kernel_size**2

    def encode(self, keys: torch.Tensor, n_used: torch.Tensor) -> torch.Tensor:
        """Sum of the final forward and backward hidden states, ``[B, Dr]``.

        Args:
            keys: ``[B, M, Dm]`` memory keys, used slots first.
            n_used: ``[B]`` used slots per episode (each ``>= 1``).

        Raises:
            ValueError: on a wrong key size or (packed path) an episode without used slots.
        """
        if keys.dim() != 3 or keys.shape[2] != self.dm:
            raise ValueError(f"keys must be [B, M, {self.dm}]; got {tuple(keys.shape)}")
        if n_used.shape != keys.shape[:1]:
            raise ValueError(f"n_used must be [B] = ({keys.shape[0]},); got {tuple(n_used.shape)}")
        if self.norm is not None:
            keys = self.norm(keys)
        sync_free = keys.device.type != "cpu" if self.sync_free is None else self.sync_free
        if sync_free:
            return self._encode_padded(keys, n_used)
        lengths = n_used.detach().to("cpu", torch.long)
        if int(lengths.min()) < 1:
            raise ValueError("n_used must give at least one used slot for every episode")
        if self.fused:
            return bilstm_final_states(self.lstm, keys, lengths)
        packed = pack_padded_sequence(keys, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: [2, B, Dr] in the input's batch order
        return h_n[0] + h_n[1]

    def _encode_padded(self, keys: torch.Tensor, n_used: torch.Tensor) -> torch.Tensor:
        """:meth:`encode` without host synchronisation (equal to the packed result).

        The forward direction of the left-aligned keys at slot ``n - 1`` has read slots
        ``0..n-1``; the backward direction of the right-aligned keys (used slots moved to
        the end) at slot ``M - n`` has read slots ``n-1..0``. Both from zero states, as
        the packed LSTM does.
        """
        b, m, _ = keys.shape
        n = n_used.to(keys.device, torch.long).clamp(1, m)  # [B]
        pos = torch.arange(m, device=keys.device).unsqueeze(0)  # [1, M]
        shift = (m - n).unsqueeze(1)  # [B, 1]
        src = (pos - shift).clamp_min(0)  # right-aligned source slot
        right = keys.gather(1, src.unsqueeze(2).expand_as(keys))
        right = right * (pos >= shift).unsqueeze(2).to(keys.dtype)
        out, _ = self.lstm(torch.cat([keys, right]))  # [2B, M, 2 Dr]
        rows = torch.arange(b, device=keys.device)
        forward = out[rows, n - 1, : self.dr]
        backward = out[b + rows, m - n, self.dr :]
        return forward + backward

    def forward(self, keys: torch.Tensor, n_used: torch.Tensor) -> torch.Tensor:
        """Predict the depthwise filters ``W`` of every episode.

        Args:
            keys: ``[B, M, Dm]`` memory keys, used slots first (slot order).
            n_used: ``[B]`` number of used slots per episode.

        Returns:
            ``[B, channels, 1, k, k]`` depthwise filters, one set per episode.

        Raises:
            ValueError: on a wrong key size or an episode without used slots.
        """
        h = self.encode(keys, n_used)
        w = self.tp(h)
        return w.view(-1, self.channels, 1, self.kernel_size, self.kernel_size)
