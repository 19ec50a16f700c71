"""MM-Net as an easyfsl ``FewShotClassifier``: ``process_support_set(images, labels)``, then
``model(query_images)`` gives ``[n_query, n_way]`` class scores, so easyfsl's ``TaskSampler``,
training loops and ``easyfsl.utils.evaluate`` work unchanged.

Importing this module imports easyfsl (an ImportError with the install command when it is
missing) and applies :func:`~mmnet_plugin.integrations.easyfsl.patch_easyfsl` for the easyfsl
versions it knows. ``mmnet_plugin.integrations.easyfsl.MMNet`` is this class under the name
earlier versions gave it.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..episodes import Episode
from ..models import MMNet
from . import require
from .easyfsl import COLLATE, ensure_patched

__all__ = ["MMNetClassifier"]

ensure_patched()
_FewShotClassifier = require("easyfsl.methods").FewShotClassifier


class MMNetClassifier(_FewShotClassifier):
    """MM-Net as an easyfsl ``FewShotClassifier``.

    Args:
        model: an existing :class:`mmnet_plugin.models.MMNet` to wrap (its weights are
            shared); default: a new one built from ``mmnet_kwargs``.
        use_softmax: return softmax probabilities from ``forward`` (easyfsl's option).
        **mmnet_kwargs: arguments of :class:`mmnet_plugin.models.MMNet` (e.g.
            ``in_channels=1, image_size=28, shuffle_support=True``).

    Attributes:
        mmnet: the wrapped model (``mmnet_plugin.models.MMNet``).

    Raises:
        ValueError: if both ``model`` and ``mmnet_kwargs`` are given, or as
            :class:`mmnet_plugin.models.MMNet` for bad arguments.
    """

    def __init__(self, model: Optional[torch.nn.Module] = None, use_softmax: bool = False, **mmnet_kwargs: Any) -> None:
        if model is not None and mmnet_kwargs:
            raise ValueError("give either an MMNet model or its constructor arguments, not both")
        super().__init__(use_softmax=use_softmax)
        self.mmnet = model if model is not None else MMNet(**mmnet_kwargs)
        self.support_images = torch.tensor(())
        self._has_support = False

    def process_support_set(self, support_images: torch.Tensor, support_labels: torch.Tensor) -> None:
        """Store the support set of the next ``forward`` calls.

        Args:
            support_images: ``[n_support, C, H, W]``.
            support_labels: ``[n_support]`` in ``0..n_way-1``, every label present.

        Raises:
            ValueError: if the support set breaks easyfsl's convention (labels
                ``0..n_way-1``, one per image) or the episode contract.
        """
        if not isinstance(support_labels, torch.Tensor) or support_labels.dim() != 1:
            raise ValueError(
                f"easyfsl support_labels must be a 1-D tensor [n_support] of labels 0..n_way-1, as {COLLATE} gives"
            )
        try:
            # Validate with the episode contract (the queries are not known yet).
            Episode(support_images, support_labels, support_images[:1])
        except ValueError as exc:
            raise ValueError(
                f"easyfsl support set breaks the convention of {COLLATE} (labels 0..n_way-1, one per image): {exc}"
            ) from exc
        self.support_images = support_images
        self.support_labels = support_labels
        self._has_support = True

    def _require_support(self) -> None:
        if not self._has_support:
            raise ValueError(
                "no support set: easyfsl's convention is model.process_support_set(support_images, "
                "support_labels) before model(query_images)"
            )

    def forward(self, query_images: torch.Tensor) -> torch.Tensor:
        """Class scores ``[n_query, n_way]`` of the queries against the stored support set.

        Args:
            query_images: ``[n_query, C, H, W]``.

        Returns:
            MM-Net's class scores (softmax probabilities with ``use_softmax=True``).

        Raises:
            ValueError: if no support set was processed, or as
                :meth:`mmnet_plugin.models.MMNet.forward`.
        """
        self._require_support()
        scores = self.mmnet(self.support_images, self.support_labels, query_images)
        return self.softmax_if_specified(scores)

    def episode_loss(self, query_images: torch.Tensor, query_labels: torch.Tensor) -> torch.Tensor:
        """MM-Net's own loss (the paper's Eq. 8) on the stored support set and these queries.

        Args:
            query_images: ``[n_query, C, H, W]``.
            query_labels: ``[n_query]`` in ``0..n_way-1``.

        Returns:
            A scalar loss with gradient.

        Raises:
            ValueError: if no support set was processed, or the episode breaks the contract.
        """
        self._require_support()
        return self.mmnet.loss(Episode(self.support_images, self.support_labels, query_images, query_labels))

    @staticmethod
    def is_transductive() -> bool:
        """MM-Net classifies each query on its own (in ``eval()`` mode)."""
        return False
