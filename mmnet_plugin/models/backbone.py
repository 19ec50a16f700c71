"""The Conv-4 backbone ``g0`` shared by MM-Net and the baselines of the benchmark harness.

Conv-4 is four blocks of (3x3 convolution with 64 filters, batch norm, ReLU, 2x2 max-pool),
flattened at the end: ``Dz = 64`` at 28x28 and ``Dz = 1600`` at 84x84. MM-Net runs all four
blocks on support images and only the first three (:meth:`Conv4.trunk`) on query images,
whose fourth block is the factorized, support-conditioned block of
:mod:`mmnet_plugin.models.factorized`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["conv_block", "Conv4", "LayoutConv2d", "embedding_dim", "feature_size"]


class LayoutConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, on the CPU, convolves in channels-last (NHWC) layout: the input
    and a channels-last copy of the weight, so oneDNN and the batch norm, ReLU and pooling
    after it run in NHWC, which is faster there.

    The weight is stored as usual (checkpoints are those of ``nn.Conv2d``); the copy is made
    per call and gradients flow to the stored weight; results equal ``nn.Conv2d``'s up to
    float rounding. Measured with one thread on the project's 2-core CPU, forward and
    backward of Conv-4 over 1,280 28x28 images (a 16-episode 5-way 1-shot MM-Net batch):
    6.1-6.8 s with ``nn.Conv2d``, 3.7-4.2 s this way. On other devices it is ``nn.Conv2d``
    (channels-last was not measured there).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight
        if x.device.type == "cpu" and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
            # clone, not contiguous: with one input channel both layouts count as contiguous
            # and contiguous() would keep NCHW strides, leaving the first block in NCHW
            w = w.clone(memory_format=torch.channels_last)
        return self._conv_forward(x, w, self.bias)


def conv_block(in_ch: int, out_ch: int, bias: bool = False) -> nn.Sequential:
    """One Conv-4 block: 3x3 conv (padding 1), BatchNorm2d, ReLU, MaxPool2d(2).

    The module runs the max-pool before the ReLU: the two commute exactly (ReLU is
    monotone, so the max of rectified values is the rectified max, and the gradient reaches
    the same input element; outputs and first-order gradients are bit-identical), and pooling
    first rectifies a quarter of the values. Second-order gradients (MAML) go through a
    different graph and may differ in float rounding. Measured with one thread on the
    project's 2-core CPU (three rounds after a warm-up), forward and backward of Conv-4 over
    80 28x28 images: 1.75-1.95 ms per image in the written order, 1.63-1.72 ms this way.

    Args:
        in_ch: input channels.
        out_ch: output channels (filters).
        bias: give the convolution a bias. Off by default: the batch norm right after it
            subtracts any per-channel constant, so a bias only adds a parameter with no
            gradient (in training mode) and no effect on the function class.

    Returns:
        ``nn.Sequential(conv, bn, pool, relu)``; spatial size ``H -> floor(H / 2)``.
    """
    if int(in_ch) < 1 or int(out_ch) < 1:
        raise ValueError(f"conv_block needs positive channel counts; got in_ch={in_ch}, out_ch={out_ch}")
    return nn.Sequential(
        LayoutConv2d(int(in_ch), int(out_ch), kernel_size=3, padding=1, bias=bias),
        nn.BatchNorm2d(int(out_ch)),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
    )


def feature_size(image_size: int, n_blocks: int = 4) -> int:
    """Spatial side after ``n_blocks`` Conv-4 blocks (each halves it, rounding down)."""
    side = int(image_size)
    for _ in range(int(n_blocks)):
        side //= 2
    return side


def embedding_dim(in_channels: int, image_size: int, hidden: int = 64) -> int:
    """Length ``Dz`` of the flattened Conv-4 embedding of a square image.

    Args:
        in_channels: image channels (does not change ``Dz``; checked for sanity).
        image_size: side of the square input image in pixels.
        hidden: filters per block.

    Returns:
        ``hidden * s * s`` with ``s = floor(image_size / 16)``: 64 at 28x28, 1600 at 84x84.

    Raises:
        ValueError: if the image is smaller than 16 pixels (nothing survives four pools)
            or a count is not positive.
    """
    if int(in_channels) < 1 or int(hidden) < 1:
        raise ValueError(f"in_channels and hidden must be positive; got {in_channels}, {hidden}")
    side = feature_size(image_size, 4)
    if side < 1:
        raise ValueError(
            f"image_size={image_size} is too small for Conv-4: four 2x2 max-pools need at least "
            "16x16 pixels (resize the images, e.g. to 28x28 or 84x84)"
        )
    return int(hidden) * side * side


class Conv4(nn.Module):
    """The standard few-shot Conv-4 embedding (Vinyals et al. 2016, Snell et al. 2017).

    ``Conv4(in_channels, hidden)(x)`` maps images ``[n, in_channels, H, W]`` to flattened
    embeddings ``[n, Dz]``. The blocks are exposed as :attr:`blocks` (an ``nn.ModuleList``
    of four :func:`conv_block`), so callers may run the first three only
    (:meth:`trunk`) and finish with their own fourth block, as MM-Net's query branch does.

    Args:
        in_channels: image channels (1 for Omniglot, 3 for miniImageNet).
        hidden: filters per block (64 in the paper).
        bias: convolution biases (see :func:`conv_block`; off by default).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, bias: bool = False) -> None:
        super().__init__()
        if int(in_channels) < 1 or int(hidden) < 1:
            raise ValueError(f"Conv4 needs positive in_channels and hidden; got {in_channels}, {hidden}")
        self.in_channels = int(in_channels)
        self.hidden = int(hidden)
        self.blocks = nn.ModuleList(
            [conv_block(self.in_channels, self.hidden, bias)]
            + [conv_block(self.hidden, self.hidden, bias) for _ in range(3)]
        )

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Feature maps after the first three blocks, ``[n, hidden, H/8, W/8]``."""
        for block in self.blocks[:3]:
            x = block(x)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The fourth block on trunk features, flattened: ``[n, Dz]``."""
        return self.blocks[3](h).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed images ``[n, in_channels, H, W]`` into ``[n, Dz]``.

        Raises:
            ValueError: if ``x`` is not 4-D with ``in_channels`` channels.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"Conv4 expects images [n, {self.in_channels}, H, W]; got shape {tuple(x.shape)} "
                f"(build Conv4(in_channels={x.shape[1] if x.dim() == 4 else '?'}) for these images)"
            )
        return self.head(self.trunk(x))

    def embedding_dim(self, image_size: int) -> int:
        """``Dz`` for square images of side ``image_size``."""
        return embedding_dim(self.in_channels, image_size, self.hidden)
