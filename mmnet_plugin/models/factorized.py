"""The factorized fourth block of MM-Net's query branch ``f`` (paper section 3.4).

Following Bertinetto et al. (NIPS 2016, "Learning feed-forward one-shot learners"), the
fourth Conv-4 block is factorized as

    1x1 conv (static) -> 3x3 depthwise conv (W, one filter per channel) -> 1x1 conv (static)
    -> BatchNorm2d -> ReLU -> MaxPool2d(2)

so that only ``channels * 3 * 3`` numbers per episode (576 for Conv-4) have to be predicted
by the contextual learner. The 1x1 convolutions have no bias (batch norm follows; the
depthwise step has none either).

For a batch of episodes the per-episode depthwise convolutions are folded into the groups
of one grouped convolution: queries are padded per episode to the largest query count,
laid out as ``[Nq_max, B * channels, H, W]`` and convolved with ``groups = B * channels``
and filters ``[B * channels, 1, 3, 3]``; padded rows are dropped afterwards. Only the cheap
depthwise step is padded; the 1x1 convolutions, batch norm and pooling run on the
concatenated real queries.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from .contextual import default_depthwise_init

__all__ = ["FactorizedConvBlock", "episode_depthwise_conv"]


def episode_depthwise_conv(
    x: torch.Tensor, filters: torch.Tensor, counts: Sequence[int], padding: int = 1
) -> torch.Tensor:
    """Depthwise convolution with a different filter bank for each episode's rows.

    Args:
        x: ``[sum(counts), C, H, W]``, the rows of episode 0, then episode 1, ...
        filters: ``[B, C, 1, k, k]`` one depthwise filter bank per episode.
        counts: rows per episode (``B`` entries, each ``>= 1``).
        padding: spatial zero padding.

    Returns:
        ``[sum(counts), C, H', W']`` in the order of ``x``.

    Raises:
        ValueError: if the shapes disagree.
    """
    counts = [int(c) for c in counts]
    b = len(counts)
    if filters.dim() != 5 or filters.shape[0] != b or filters.shape[2] != 1:
        raise ValueError(f"filters must be [B={b}, C, 1, k, k]; got {tuple(filters.shape)}")
    if x.dim() != 4 or x.shape[0] != sum(counts) or x.shape[1] != filters.shape[1]:
        raise ValueError(
            f"x must be [{sum(counts)}, {filters.shape[1]}, H, W] for these counts and filters; got {tuple(x.shape)}"
        )
    c = x.shape[1]
    if b == 1:
        return F.conv2d(x, filters[0], padding=padding, groups=c)
    padded = pad_sequence(list(torch.split(x, counts)), batch_first=True)  # [B, Nq_max, C, H, W]
    n_max = padded.shape[1]
    grouped = padded.transpose(0, 1).reshape(n_max, b * c, *x.shape[2:])
    out = F.conv2d(grouped, filters.reshape(b * c, 1, *filters.shape[3:]), padding=padding, groups=b * c)
    out = out.reshape(n_max, b, c, *out.shape[2:]).transpose(0, 1)  # [B, Nq_max, C, H', W']
    # real rows by index, computed on the host from the counts (a boolean mask would make
    # the device report how many rows it kept: a host synchronisation on a GPU)
    keep = (torch.arange(n_max).unsqueeze(0) < torch.tensor(counts).unsqueeze(1)).flatten().nonzero().squeeze(1)
    keep = keep.to(x.device)
    return out.reshape(b * n_max, *out.shape[2:]).index_select(0, keep)


class FactorizedConvBlock(nn.Module):
    """1x1 conv, per-episode 3x3 depthwise conv, 1x1 conv, BN, ReLU, 2x2 max-pool.

    Args:
        in_channels: channels entering the block (64 after three Conv-4 blocks).
        channels: channels of the depthwise step and of the output (64 for Conv-4).
        kernel_size: side of the depthwise filters (3).
        static_filters: hold one learned depthwise filter bank (``self.depthwise``) used
            for every episode instead of taking predicted filters -- the ablation
            "without contextual learner". Initialised like ``nn.Conv2d``'s default.

    Raises:
        ValueError: for non-positive sizes or an even kernel size.
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int = 3, static_filters: bool = False) -> None:
        super().__init__()
        if int(in_channels) < 1 or int(channels) < 1 or int(kernel_size) < 1:
            raise ValueError(f"sizes must be positive; got {in_channels}, {channels}, {kernel_size}")
        if int(kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep the spatial size; got {kernel_size}")
        self.in_channels, self.channels, self.kernel_size = int(in_channels), int(channels), int(kernel_size)
        self.pointwise_in = nn.Conv2d(self.in_channels, self.channels, 1, bias=False)
        self.pointwise_out = nn.Conv2d(self.channels, self.channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(self.channels)
        self.pool = nn.MaxPool2d(2)
        if static_filters:
            self.depthwise: Optional[nn.Parameter] = nn.Parameter(
                default_depthwise_init(
                    torch.empty(self.channels, 1, self.kernel_size, self.kernel_size), self.kernel_size
                )
            )
        else:
            self.register_parameter("depthwise", None)

    def forward(
        self,
        x: torch.Tensor,
        filters: Optional[torch.Tensor] = None,
        counts: Optional[Union[Sequence[int], torch.Tensor]] = None,
    ) -> torch.Tensor:
        """Apply the block.

        Args:
            x: ``[n, in_channels, H, W]``; rows grouped by episode (episode 0 first).
            filters: ``[B, channels, 1, k, k]`` predicted filters, one bank per episode;
                ``None`` when the block holds static filters.
            counts: rows of ``x`` per episode (``B`` entries); ``None`` for one episode.

        Returns:
            ``[n, channels, H // 2, W // 2]`` feature maps (not flattened).

        Raises:
            ValueError: if filters are missing / superfluous or counts do not fit ``x``.
        """
        h = self.pointwise_in(x)
        pad = self.kernel_size // 2
        if self.depthwise is not None:
            if filters is not None:
                raise ValueError("this block has static depthwise filters; do not pass predicted filters")
            h = F.conv2d(h, self.depthwise, padding=pad, groups=self.channels)
        else:
            if filters is None:
                raise ValueError("this block needs predicted depthwise filters [B, C, 1, k, k]")
            if counts is None:
                if filters.shape[0] != 1:
                    raise ValueError(f"{filters.shape[0]} filter banks but no per-episode counts")
                counts = [x.shape[0]]
            counts = [int(c) for c in (counts.tolist() if isinstance(counts, torch.Tensor) else counts)]
            h = episode_depthwise_conv(h, filters, counts, padding=pad)
        h = self.pointwise_out(h)
        return F.relu(self.pool(self.bn(h)))  # pool, then ReLU: they commute (see conv_block)
