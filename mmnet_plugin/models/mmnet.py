"""Memory Matching Networks (Cai et al., CVPR 2018) as a ``torch.nn.Module``.

The model, following the README's "MM-Net as built here" (symbols of the paper):

* ``z = g0(x)``: the Conv-4 backbone on the support images (all four blocks).
* Memory: ``zk = Tz z`` (``Dm`` = 512) written by the write controller
  (:func:`~mmnet_plugin.models.memory.write_memory`), read by the read controller:
  ``g(x_n) = Tc c_n + z_n`` (shortcut connection).
* Contextual learner: a bi-LSTM (``Dr`` = 512) over the used memory keys, then ``Tp``,
  gives ``W``: 576 depthwise filter numbers per episode.
* Query branch ``f``, two forms (``query_branch``):

  - ``"residual"`` (default): ``f(q) = g0(q) + alpha * F_W(h_q)``, the whole backbone
    (shared with the support branch) plus a gated residual: ``F_W`` is the factorized
    block below on the trunk features ``h_q`` (first three blocks), ``alpha`` a learned
    per-channel gate that starts at 0. At step 0 the model *is* the symmetric model
    (``f = g0``, one embedding space for queries and supports) and the support-conditioned
    branch can only be added by training. The contextual learner reads LayerNorm'd keys
    and its ``Tp`` has no bias, so every number of ``W`` depends on the memory.
  - ``"paper"``: the paper's description taken literally: the first three blocks of the
    same Conv-4, then the factorized block *instead of* the fourth block, with its own
    batch norm, trained by the queries only; ``Tp``'s bias starts as a static filter.

  The factorized block: 1x1 conv, 3x3 depthwise conv with ``W``, 1x1 conv, BN, ReLU,
  max-pool, flattened to ``Dz``.
* Matching: ``P_n = s * f(q) . g(x_n)`` for each support item ``n``.
* Loss: Eq. 8 written out, ``-sum_{n: y_n = y_q} log softmax_n(P_q)`` per query, averaged
  over the queries of an episode and then over the episodes.

Everything runs batched over a ``Sequence[Episode]`` whose episodes may differ in ways,
shots and query counts: one backbone pass over all images, one write-controller step per
support position for all episodes, one packed LSTM call, one grouped convolution for the
predicted filters, one padded ``bmm`` for the similarities.

Batch norm is standard PyTorch: batch statistics in training (computed over all images of
the batch: support and query images of all episodes in blocks 1-3, and in block 4 too in
the residual form), running statistics in ``eval()``. Results of a batch equal those of
its episodes one by one only in ``eval()``.

Why the residual form is the default: measured in this repository (README, "MM-Net's own
parts"), the paper form's query branch scored below the model without a query branch,
because the dot product must align two independently initialised spaces (the support's
fourth block and the query's factorized block); the residual form starts from the model
without a query branch. The figures and the val-split comparison behind the default are in
the README.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from ..episodes import Episode
from .backbone import Conv4
from .contextual import ContextualLearner
from .factorized import FactorizedConvBlock
from .memory import MemoryState, read_memory, write_memory

__all__ = ["MMNet", "MMNetOutput", "DECISIONS", "QUERY_BRANCHES"]

DECISIONS = ("nearest", "class_mass")
QUERY_BRANCHES = ("residual", "paper")
EpisodesLike = Union[Episode, Sequence[Episode]]


@dataclass
class MMNetOutput:
    """Everything one batched forward pass computes, padded over the episodes.

    ``B`` episodes, ``Ns``/``Nq`` the largest support/query count, ``C`` the largest way.

    Attributes:
        similarities: ``[B, Nq, Ns]`` ``P = s * f(q) . g(x_n)``; ``-inf`` at padded support
            positions (rows of padded queries are finite but meaningless).
        class_scores: ``[B, Nq, C]`` scores of the decision rule; ``-inf`` for classes an
            episode does not have.
        support_labels: ``[B, Ns]`` labels, ``-1`` at padding.
        query_labels: ``[B, Nq]`` labels, ``-2`` at padding; ``None`` if any episode has none.
        support_mask: ``[B, Ns]`` bool, real support items.
        query_mask: ``[B, Nq]`` bool, real queries.
        n_way, n_support, n_query: per-episode counts.
        support_embeddings: ``[B, Ns, Dz]`` ``g(x_n | M)``.
        query_embeddings: ``[B, Nq, Dz]`` ``f(q | M)``.
        memory: the written memory (``None`` when no ablation setting needs it).
        filters: ``[B, C_f, 1, 3, 3]`` predicted depthwise filters (``None`` without the
            contextual learner or the query branch).
        write_order: ``[B, Ns]`` support indices in the order they were written.
    """

    similarities: torch.Tensor
    class_scores: torch.Tensor
    support_labels: torch.Tensor
    query_labels: Optional[torch.Tensor]
    support_mask: torch.Tensor
    query_mask: torch.Tensor
    n_way: List[int]
    n_support: List[int]
    n_query: List[int]
    support_embeddings: torch.Tensor
    query_embeddings: torch.Tensor
    memory: Optional[MemoryState]
    filters: Optional[torch.Tensor]
    write_order: torch.Tensor

    @property
    def scores(self) -> List[torch.Tensor]:
        """Per-episode class scores, ``[n_query, n_way]`` each (what ``forward`` returns)."""
        return [self.class_scores[b, : self.n_query[b], : self.n_way[b]] for b in range(len(self.n_way))]

    def episode_similarities(self, b: int) -> torch.Tensor:
        """Similarity matrix ``P`` of episode ``b``, ``[n_query, n_support]``."""
        return self.similarities[b, : self.n_query[b], : self.n_support[b]]

    def predictions(self) -> List[torch.Tensor]:
        """Per-episode predicted labels ``[n_query]`` (argmax of :attr:`scores`)."""
        pred = self.class_scores.argmax(dim=2)
        return [pred[b, : self.n_query[b]] for b in range(len(self.n_way))]

    def episode_losses(self) -> torch.Tensor:
        """Eq. 8 per episode, ``[B]``: mean over its queries of
        ``-sum_{n: y_n = y_q} log softmax_n(P_q)``.

        Raises:
            ValueError: if the episodes carry no query labels.
        """
        if self.query_labels is None:
            raise ValueError("the loss needs query labels: every episode must have query_y")
        log_p = torch.log_softmax(self.similarities.float(), dim=2)  # float32 under bf16 autocast too
        match = self.support_labels.unsqueeze(1) == self.query_labels.unsqueeze(2)
        match = match & self.support_mask.unsqueeze(1) & self.query_mask.unsqueeze(2)
        per_query = -log_p.masked_fill(~match, 0.0).sum(dim=2)  # [B, Nq]
        n_query = torch.tensor(self.n_query, device=per_query.device, dtype=per_query.dtype)
        return per_query.sum(dim=1) / n_query

    def accuracies(self) -> torch.Tensor:
        """Per-episode accuracy of the decision rule, ``[B]`` (no gradient).

        Raises:
            ValueError: if the episodes carry no query labels.
        """
        if self.query_labels is None:
            raise ValueError("accuracy needs query labels: every episode must have query_y")
        with torch.no_grad():
            correct = (self.class_scores.argmax(dim=2) == self.query_labels) & self.query_mask
            n_query = torch.tensor(self.n_query, device=correct.device, dtype=torch.float32)
            return correct.sum(dim=1).float() / n_query


class MMNet(nn.Module):
    """Memory Matching Networks for one-shot image recognition.

    Args:
        in_channels: image channels (1 Omniglot, 3 miniImageNet).
        image_size: side of the square input images (28 Omniglot, 84 miniImageNet).
        dm: memory key size ``Dm``.
        dr: bi-LSTM hidden size ``Dr``.
        memory_slots: memory size ``M`` per episode; ``None`` (default) = as many slots as
            the episode has support items, so the memory never overflows.
        similarity_scale: ``s`` in ``P = s * f . g``: a positive float or ``"learned"`` (a
            learned ``s = exp(log_s)`` starting at ``learned_scale_init``). Default 0.125,
            chosen by measurement: the paper's raw dot product (``1.0``) starts with a
            saturated softmax (first loss about 10-13) and learned more slowly in every
            comparison we ran (glyph-like data, 200 steps of 16 episodes: 86.8 +- 1.8% at
            1/8 against 78.6 +- 2.3% at 1; real Omniglot in the design prototype: 87.4 against
            84.0%), and re-checked on Omniglot's val split with the residual query branch
            (20-way 1-shot, 750 steps of 4 episodes: 92.79 +- 0.39% at 1/8 against 90.18 +- 0.42%
            at 1). Pass ``similarity_scale=1.0`` for the paper's raw dot product.
        learned_scale_init: initial ``s`` when ``similarity_scale="learned"``. Adam at the
            trainer's learning rate (1e-3) moves ``log s`` by at most about 0.001 a step, so ``s``
            stays near its start for thousands of steps (measured: from 1.0 to 0.988 in 100 steps on
            Omniglot 20-way 1-shot, scoring like a fixed ``s = 1``); start it where you want it.
        decision: ``"nearest"`` (the paper: the label of the most similar support item;
            class score = max similarity over the class's items) or ``"class_mass"`` (class
            score = log of the softmax mass of the class's items).
        backbone: ``g0``; a :class:`Conv4` by default. A custom backbone must expose
            ``blocks``, an indexable of exactly four modules: the query branch runs
            ``blocks[0..2]`` and then its own factorized block, the support branch all
            four, flattening the result. The fourth block must halve the spatial size
            (like :func:`conv_block`), so that ``f`` and ``g`` have the same ``Dz``; this is
            checked with a dry run at construction.
        filter_init_scale: factor on ``Tp``'s default weight init: how strongly the
            predicted filters depend on the support set at step 0 (in the paper form
            ``Tp``'s bias starts as a default depthwise-conv init, so every episode starts
            near one ordinary depthwise filter bank; see
            :mod:`~mmnet_plugin.models.contextual` for the measured magnitudes).
        shuffle_support: shuffle the write order of each episode in training mode, with
            the model's own ``torch.Generator`` (seeded by ``shuffle_seed``; its state is
            saved in ``state_dict``). Off by default because
            :class:`~mmnet_plugin.episodes.EpisodeSampler` already draws support items in a
            random order, which keeps the write order a function of the sampler seed alone.
        shuffle_seed: seed of that generator.
        use_memory_read: ablation; ``False`` gives ``g = z`` (no read controller, no ``Tc``).
        use_contextual_learner: ablation; ``False`` uses one learned static depthwise
            filter bank in the factorized block for every episode (no LSTM, no ``Tp``).
        use_query_branch: ablation; ``False`` sends queries through ``g0``'s own fourth
            block, so ``f = g0`` and no filters are predicted (``use_contextual_learner`` is
            then moot).
        query_branch: the form of the query branch, ``"residual"`` (default) or
            ``"paper"`` (see the module docstring). Both share the first three blocks with
            ``g0`` and predict the same 576 filter numbers per episode.

    Raises:
        ValueError: for any invalid setting, naming it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        dm: int = 512,
        dr: int = 512,
        memory_slots: Optional[int] = None,
        similarity_scale: Union[float, str] = 0.125,
        decision: str = "nearest",
        backbone: Optional[nn.Module] = None,
        filter_init_scale: float = 1.0,
        shuffle_support: bool = False,
        shuffle_seed: int = 0,
        use_memory_read: bool = True,
        use_contextual_learner: bool = True,
        use_query_branch: bool = True,
        learned_scale_init: float = 1.0,
        query_branch: str = "residual",
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("image_size", image_size), ("dm", dm), ("dr", dr)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer; got {v!r}")
        if memory_slots is not None and (
            isinstance(memory_slots, bool) or not isinstance(memory_slots, int) or memory_slots < 1
        ):
            raise ValueError(f"memory_slots must be a positive integer or None; got {memory_slots!r}")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}; got {decision!r}")
        if query_branch not in QUERY_BRANCHES:
            raise ValueError(f"query_branch must be one of {QUERY_BRANCHES}; got {query_branch!r}")
        self.query_branch = query_branch
        self.learned_scale_init = float(learned_scale_init)
        self.in_channels, self.image_size = in_channels, image_size
        self.dm, self.dr = dm, dr
        self.memory_slots = memory_slots
        self.decision = decision
        self.shuffle_support = bool(shuffle_support)
        self.shuffle_seed = int(shuffle_seed)
        self.use_memory_read = bool(use_memory_read)
        self.use_query_branch = bool(use_query_branch)
        self.use_contextual_learner = bool(use_contextual_learner) and self.use_query_branch
        self.filter_init_scale = float(filter_init_scale)

        # similarity scale
        if isinstance(similarity_scale, str):
            if similarity_scale != "learned":
                raise ValueError(f'similarity_scale must be a positive number or "learned"; got {similarity_scale!r}')
            if not float(learned_scale_init) > 0:
                raise ValueError(f"learned_scale_init must be positive; got {learned_scale_init!r}")
            self.log_scale: Optional[nn.Parameter] = nn.Parameter(torch.tensor(math.log(float(learned_scale_init))))
            self.fixed_scale = None
        else:
            if (
                isinstance(similarity_scale, bool)
                or not float(similarity_scale) > 0
                or not math.isfinite(float(similarity_scale))
            ):
                raise ValueError(f'similarity_scale must be a positive number or "learned"; got {similarity_scale!r}')
            self.register_parameter("log_scale", None)
            self.fixed_scale = float(similarity_scale)

        # backbone g0 and the shape facts the other parts need
        self.backbone = Conv4(in_channels) if backbone is None else backbone
        blocks = getattr(self.backbone, "blocks", None)
        try:
            n_blocks = len(blocks) if blocks is not None else 0
        except TypeError:
            n_blocks = 0
        if n_blocks != 4:
            raise ValueError(
                "backbone must expose `blocks`, an indexable of exactly four modules "
                "(three trunk blocks and a fourth block that halves the spatial size), like Conv4"
            )
        c3, c4, self.dz = self._probe_backbone()

        needs_memory = self.use_memory_read or self.use_contextual_learner
        self.tz: Optional[nn.Linear] = nn.Linear(self.dz, dm, bias=False) if needs_memory else None
        self.tc: Optional[nn.Linear] = nn.Linear(dm, self.dz, bias=False) if self.use_memory_read else None
        residual = query_branch == "residual"
        self.contextual: Optional[ContextualLearner] = (
            ContextualLearner(dm, dr, c4, 3, filter_init_scale, input_norm=residual, static_bias=not residual)
            if self.use_contextual_learner
            else None
        )
        self.query_block: Optional[FactorizedConvBlock] = (
            FactorizedConvBlock(c3, c4, 3, static_filters=not self.use_contextual_learner)
            if self.use_query_branch
            else None
        )
        # the residual form's gate alpha, per channel, from 0: f = g0 at step 0
        self.query_gate: Optional[nn.Parameter] = (
            nn.Parameter(torch.zeros(c4)) if self.use_query_branch and residual else None
        )
        self._generator = torch.Generator().manual_seed(self.shuffle_seed)

    # ------------------------------------------------------------------ setup helpers
    def _probe_backbone(self) -> Tuple[int, int, int]:
        """Dry-run the backbone (eval mode, no grad) for channel counts and ``Dz``."""
        was_training = self.backbone.training
        self.backbone.eval()
        try:
            with torch.no_grad():
                p = next(self.backbone.parameters(), None)
                x = torch.zeros(
                    1,
                    self.in_channels,
                    self.image_size,
                    self.image_size,
                    device=p.device if p is not None else None,
                    dtype=p.dtype if p is not None else None,
                )
                try:
                    h = x
                    for block in list(self.backbone.blocks)[:3]:
                        h = block(h)
                    z = self.backbone.blocks[3](h)
                except RuntimeError as exc:
                    raise ValueError(
                        f"the backbone cannot embed {self.in_channels}x{self.image_size}x{self.image_size} "
                        f"images ({exc}); check in_channels and image_size (Conv-4 needs at least 16x16)"
                    ) from None
        finally:
            self.backbone.train(was_training)
        if h.dim() != 4 or z.dim() != 4:
            raise ValueError("backbone blocks must produce feature maps [n, C, H, W]")
        if z.shape[2] != h.shape[2] // 2 or z.shape[3] != h.shape[3] // 2 or z.shape[2] < 1:
            raise ValueError(
                f"the backbone's fourth block maps {tuple(h.shape[1:])} to {tuple(z.shape[1:])}; it must halve "
                "the spatial size (3x3 conv, padding 1, 2x2 max-pool) so the factorized query block matches it"
            )
        return int(h.shape[1]), int(z.shape[1]), int(z[0].numel())

    @property
    def similarity_scale(self) -> torch.Tensor:
        """The current ``s`` (a tensor; learned or fixed)."""
        if self.log_scale is not None:
            return self.log_scale.exp()
        return torch.tensor(self.fixed_scale)

    def get_extra_state(self) -> Dict[str, Any]:
        """Saved with ``state_dict``: the shuffle generator's state (for exact resumes) and
        :attr:`config` (read by :meth:`from_checkpoint`)."""
        # the configuration too, so that any file holding these weights can rebuild the model
        return {"shuffle_generator": self._generator.get_state(), "config": self.config}

    def set_extra_state(self, state: Any) -> None:
        """Restore what :meth:`get_extra_state` saved."""
        if isinstance(state, dict) and state.get("shuffle_generator") is not None:
            self._generator.set_state(state["shuffle_generator"])

    # ------------------------------------------------------------------ input checks
    def _as_episodes(self, episodes: EpisodesLike) -> List[Episode]:
        if isinstance(episodes, Episode):
            episodes = [episodes]
        if isinstance(episodes, (str, bytes)) or not isinstance(episodes, Sequence):
            raise ValueError(f"expected an Episode or a sequence of Episodes; got {type(episodes).__name__}")
        episodes = list(episodes)
        if not episodes:
            raise ValueError("the batch is empty: pass at least one Episode")
        want = (self.in_channels, self.image_size, self.image_size)
        for i, ep in enumerate(episodes):
            if not isinstance(ep, Episode):
                raise ValueError(
                    f"batch item {i} is a {type(ep).__name__}, not an Episode; wrap tensors with "
                    "mmnet_plugin.Episode(support_x, support_y, query_x, query_y)"
                )
            for name, x in (("support", ep.support_x), ("query", ep.query_x)):
                if tuple(x.shape[1:]) != want:
                    raise ValueError(
                        f"episode {i}: {name} images are {tuple(x.shape[1:])} but this MMNet was built for "
                        f"[in_channels, H, W] = {want}; build MMNet(in_channels={x.shape[1]}, "
                        f"image_size={x.shape[2]}) for these images, or resize them to "
                        f"{self.image_size}x{self.image_size}"
                    )
        return episodes

    def _write_order(
        self, n_support: List[int], device: torch.device, generator: Optional[torch.Generator]
    ) -> torch.Tensor:
        b, n = len(n_support), max(n_support)
        lengths = torch.tensor(n_support).unsqueeze(1)
        if self.training and self.shuffle_support:
            keys = torch.rand(b, n, generator=generator if generator is not None else self._generator)
            keys = keys.masked_fill(torch.arange(n).unsqueeze(0) >= lengths, 2.0)  # padding stays last
            return keys.argsort(dim=1).to(device)
        return torch.arange(n, device=device).unsqueeze(0).expand(b, n)

    # ------------------------------------------------------------------ the model
    def forward_batch(self, episodes: EpisodesLike, generator: Optional[torch.Generator] = None) -> MMNetOutput:
        """Run a batch of episodes (ways, shots and query counts may differ).

        Episode tensors are moved to the model's device.

        Args:
            episodes: one :class:`Episode` or a sequence of them.
            generator: overrides the model's own generator for the support shuffle
                (only used in training mode with ``shuffle_support=True``).

        Returns:
            An :class:`MMNetOutput`; ``.scores`` are the per-episode class scores,
            ``.episode_losses()`` and ``.accuracies()`` the per-episode Eq. 8 loss and
            accuracy.

        Raises:
            ValueError: if the input is not a non-empty batch of episodes with images of
                this model's ``in_channels`` and ``image_size``.
        """
        eps = self._as_episodes(episodes)
        p = next(self.parameters())
        device = p.device
        n_support = [int(e.support_y.shape[0]) for e in eps]
        n_query = [int(e.query_x.shape[0]) for e in eps]
        n_way = [e.n_way for e in eps]

        images = torch.cat([e.support_x for e in eps] + [e.query_x for e in eps]).to(device, p.dtype)
        h = images
        for block in list(self.backbone.blocks)[:3]:
            h = block(h)
        n_s = sum(n_support)
        if self.query_block is not None and self.query_gate is None:  # paper form
            z = self.backbone.blocks[3](h[:n_s]).flatten(1)
        else:  # residual form, or f = g0
            z_maps = self.backbone.blocks[3](h)
            z, fq = z_maps[:n_s].flatten(1), z_maps[n_s:]

        z_pad = pad_sequence(list(torch.split(z, n_support)), batch_first=True)  # [B, Ns, Dz]
        sy = pad_sequence([e.support_y.to(device) for e in eps], batch_first=True, padding_value=-1)
        lengths = torch.tensor(n_support, device=device)
        ns_max = z_pad.shape[1]
        support_mask = torch.arange(ns_max, device=device).unsqueeze(0) < lengths.unsqueeze(1)

        order = self._write_order(n_support, device, generator)
        memory: Optional[MemoryState] = None
        g = z_pad
        if self.tz is not None:
            zk = self.tz(z_pad)  # [B, Ns, Dm]
            if self.training and self.shuffle_support:
                zk_w = zk.gather(1, order.unsqueeze(2).expand_as(zk))
                sy_w = sy.gather(1, order)
            else:
                zk_w, sy_w = zk, sy
            memory = write_memory(zk_w, sy_w, lengths, self.memory_slots)
            if self.tc is not None:
                c = read_memory(zk, memory.keys, memory.used)
                g = self.tc(c) + z_pad  # Eq. 6

        filters = None
        if self.query_block is not None:
            hq = h[n_s:]
            if self.contextual is not None:
                filters = self.contextual(memory.keys, memory.n_used)
                branch = self.query_block(hq, filters, n_query)
            else:
                branch = self.query_block(hq)
            if self.query_gate is not None:  # f = g0(q) + alpha F_W(h_q)
                fq = fq + self.query_gate.view(1, -1, 1, 1) * branch
            else:
                fq = branch
        fq = fq.flatten(1)
        f_pad = pad_sequence(list(torch.split(fq, n_query)), batch_first=True)  # [B, Nq, Dz]
        nq_max = f_pad.shape[1]
        query_mask = torch.arange(nq_max, device=device).unsqueeze(0) < torch.tensor(n_query, device=device).unsqueeze(
            1
        )

        scale = self.log_scale.exp() if self.log_scale is not None else self.fixed_scale
        sim = scale * torch.bmm(f_pad, g.transpose(1, 2))  # [B, Nq, Ns]
        sim = sim.masked_fill(~support_mask.unsqueeze(1), float("-inf"))
        class_scores = self._class_scores(sim, sy, n_way)

        if all(e.query_y is not None for e in eps):
            qy = pad_sequence([e.query_y.to(device) for e in eps], batch_first=True, padding_value=-2)
        else:
            qy = None
        return MMNetOutput(
            similarities=sim,
            class_scores=class_scores,
            support_labels=sy,
            query_labels=qy,
            support_mask=support_mask,
            query_mask=query_mask,
            n_way=n_way,
            n_support=n_support,
            n_query=n_query,
            support_embeddings=g,
            query_embeddings=f_pad,
            memory=memory,
            filters=filters,
            write_order=order,
        )

    def _class_scores(self, sim: torch.Tensor, support_labels: torch.Tensor, n_way: List[int]) -> torch.Tensor:
        """Class scores ``[B, Nq, C]`` of the decision rule from similarities ``[B, Nq, Ns]``."""
        b, nq, _ = sim.shape
        c = max(n_way)
        index = support_labels.clamp_min(0).unsqueeze(1).expand_as(sim)
        base = sim.new_full((b, nq, c), float("-inf"))
        if self.decision == "nearest":
            return base.scatter_reduce(2, index, sim, reduce="amax", include_self=True)
        # class_mass: log sum_{n in class} softmax_n(P), a per-class logsumexp of log-probs
        # (in float32, also under bf16 autocast)
        sim = sim.float()
        base = base.float()
        log_p = torch.log_softmax(sim, dim=2)
        shift = base.scatter_reduce(2, index, log_p.detach(), reduce="amax", include_self=True)
        mass = torch.zeros_like(base).scatter_add(2, index, (log_p - shift.gather(2, index)).exp())
        valid = torch.arange(c, device=sim.device).unsqueeze(0) < torch.tensor(n_way, device=sim.device).unsqueeze(1)
        valid = valid.unsqueeze(1).expand_as(mass)
        safe_mass = torch.where(valid, mass, torch.ones_like(mass))
        safe_shift = torch.where(valid, shift, torch.zeros_like(shift))
        return torch.where(valid, safe_mass.log() + safe_shift, base)

    # ------------------------------------------------------------------ public API
    def forward(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Class scores of the queries of one episode, ``[n_query, n_way]``.

        The scores follow the decision rule (``nearest``: max similarity over each class's
        support items; ``class_mass``: log of the class's softmax mass), so their argmax is
        :meth:`predict`.

        Args:
            support_x: ``[N_s, C, H, W]`` support images.
            support_y: ``[N_s]`` labels ``0..n_way-1``, every class present.
            query_x: ``[N_q, C, H, W]`` query images.

        Raises:
            ValueError: if the episode breaks the episode contract or its images do not
                match ``in_channels``/``image_size``.
        """
        return self.forward_batch(Episode(support_x, support_y, query_x)).scores[0]

    @torch.no_grad()
    def predict(self, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor) -> torch.Tensor:
        """Predicted labels ``[n_query]`` of one episode (argmax of :meth:`forward`).

        For ``decision="nearest"`` this is the label of the most similar support item.

        Raises:
            ValueError: as :meth:`forward`.
        """
        return self.forward(support_x, support_y, query_x).argmax(dim=1)

    def predict_batch(self, episodes: EpisodesLike) -> List[torch.Tensor]:
        """Predicted labels per episode of a batch (no gradient)."""
        with torch.no_grad():
            return self.forward_batch(episodes).predictions()

    def loss(self, episodes: EpisodesLike) -> torch.Tensor:
        """Eq. 8 averaged over queries, then over episodes (a scalar).

        Raises:
            ValueError: if an episode has no query labels, or as :meth:`forward_batch`.
        """
        return self.loss_and_accuracy(episodes)[0]

    def loss_and_accuracy(self, episodes: EpisodesLike) -> Tuple[torch.Tensor, torch.Tensor]:
        """The loss and the per-episode accuracy from one forward pass.

        Returns:
            ``(loss, accuracy)``: the scalar Eq. 8 loss (mean over episodes) and a ``[B]``
            tensor of accuracies under the decision rule (no gradient).

        Raises:
            ValueError: if an episode has no query labels, or as :meth:`forward_batch`.
        """
        eps = self._as_episodes(episodes)
        missing = [i for i, e in enumerate(eps) if e.query_y is None]
        if missing:
            raise ValueError(f"the loss needs query labels; episode(s) {missing} have query_y=None")
        out = self.forward_batch(eps)
        return out.episode_losses().mean(), out.accuracies()

    # ------------------------------------------------------------------ saving and loading
    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments that rebuild this model (all but ``backbone``), as plain
        values: what ``mmnet train`` stores in a checkpoint's ``model_config``."""
        return {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "dm": self.dm,
            "dr": self.dr,
            "memory_slots": self.memory_slots,
            "similarity_scale": "learned" if self.log_scale is not None else self.fixed_scale,
            "learned_scale_init": self.learned_scale_init,
            "decision": self.decision,
            "filter_init_scale": self.filter_init_scale,
            "shuffle_support": self.shuffle_support,
            "shuffle_seed": self.shuffle_seed,
            "use_memory_read": self.use_memory_read,
            "use_contextual_learner": self.use_contextual_learner,
            "use_query_branch": self.use_query_branch,
            "query_branch": self.query_branch,
        }

    @classmethod
    def from_checkpoint(
        cls,
        path: Union[str, "os.PathLike[str]"],
        map_location: Union[str, torch.device] = "cpu",
        backbone: Optional[nn.Module] = None,
    ) -> "MMNet":
        """Load a trained model from any checkpoint this package writes: ``mmnet train``,
        :class:`~mmnet_plugin.Trainer` (with or without ``model_config``) and the harness.

        The file is read with ``torch.load(weights_only=True)`` (no code runs from it). The
        model is rebuilt from the configuration the checkpoint states (its ``model_config``,
        else the one the model saved with its weights); a file written before models saved
        their configuration is rebuilt from the shapes of its weights, with the options that
        leave no trace in the weights (``decision``, ``memory_slots``, a fixed
        ``similarity_scale``) at their defaults and a warning. Checkpoints written before the
        ``query_branch`` option existed hold the paper form's weights and are rebuilt as
        ``query_branch="paper"``. The configuration is checked against the weights before
        anything is allocated, and weights holding NaN or infinity are refused.

        Args:
            path: the checkpoint file.
            map_location: where to put the weights (``"cpu"``, ``"cuda"``, ...).
            backbone: the custom backbone the model was trained with, if not Conv-4
                (its weights come from the checkpoint).

        Returns:
            The model, in ``eval()`` mode.

        Raises:
            CheckpointError: if the file is missing, unsafe, truncated or not a checkpoint of
                this package, names options this version does not know, or holds weights that
                are not finite or do not fit its configuration; one line naming the file.
        """
        from ..checkpoints import CheckpointError, check_finite, load, model_weights, shorten

        state = load(path, map_location=map_location)
        weights = model_weights(state, path)
        check_finite(weights, path)
        config = _stated_config(state, weights)
        if config is None:
            config = _config_from_weights(weights, path, custom_backbone=backbone is not None)
        known = set(inspect.signature(cls.__init__).parameters) - {"self", "backbone"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise CheckpointError(
                f"{path}: unknown model option(s) {shorten(', '.join(map(str, unknown)))} in its configuration; it "
                "was written by another version of mmnet-plugin (install that version) or edited by hand"
            )
        if (
            "query_branch" not in config
            and config.get("use_query_branch", True)
            and not any(k == "query_gate" for k in weights)
        ):
            config["query_branch"] = "paper"  # written before the residual form existed
        # built on the meta device first: an absurd configuration (dm = 10**12) is refused by
        # comparing shapes, before any memory is allocated
        try:
            with torch.device("meta"):
                probe = cls(**config, backbone=None if backbone is None else copy.deepcopy(backbone).to("meta"))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path}: its model configuration {shorten(config)} is invalid: {shorten(str(exc))}"
            ) from None
        _check_fits(probe.state_dict(), weights, path)
        model = cls(**config, backbone=backbone)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1]
            raise CheckpointError(
                f"{path}: the weights do not fit its model configuration ({shorten(last)}); the checkpoint was "
                "edited or written by other code"
            ) from None
        model.to(map_location)
        return model.eval()

    def extra_repr(self) -> str:
        scale = "learned" if self.log_scale is not None else self.fixed_scale
        return (
            f"in_channels={self.in_channels}, image_size={self.image_size}, dz={self.dz}, dm={self.dm}, "
            f"dr={self.dr}, memory_slots={self.memory_slots}, similarity_scale={scale}, "
            f"decision={self.decision!r}, shuffle_support={self.shuffle_support}, "
            f"use_memory_read={self.use_memory_read}, use_contextual_learner={self.use_contextual_learner}, "
            f"use_query_branch={self.use_query_branch}, query_branch={self.query_branch!r}"
        )


def _stated_config(state: Any, weights: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The model configuration a checkpoint states: its ``model_config``, else the one the
    model saved in its extra state (``None`` if neither)."""
    if isinstance(state, dict) and isinstance(state.get("model_config"), dict) and state["model_config"]:
        return dict(state["model_config"])
    extra = weights.get("_extra_state")
    if isinstance(extra, dict) and isinstance(extra.get("config"), dict) and extra["config"]:
        return dict(extra["config"])
    return None


#: Conv-4 feature size -> image size, for checkpoints that state no configuration.
_IMAGE_SIZE_OF_DZ = {64: 28, 1600: 84}


def _config_from_weights(weights: Dict[str, Any], path: Any, custom_backbone: bool) -> Dict[str, Any]:
    """Rebuild the configuration of a checkpoint that states none from its weights' shapes;
    options that leave no trace in the weights keep their defaults (with a warning)."""
    import warnings

    from ..checkpoints import CheckpointError

    def shape(key: str) -> Optional[Tuple[int, ...]]:
        value = weights.get(key)
        return tuple(value.shape) if isinstance(value, torch.Tensor) else None

    config: Dict[str, Any] = {}
    first = shape("backbone.blocks.0.0.weight")
    if first is not None and len(first) == 4:
        config["in_channels"] = first[1]
    elif not custom_backbone:
        raise CheckpointError(f"{path} states no model configuration and holds no Conv-4 weights; it is not ours")
    tz = shape("tz.weight")
    if tz is not None and len(tz) == 2:
        config["dm"] = tz[0]
        if not custom_backbone:
            if tz[1] not in _IMAGE_SIZE_OF_DZ:
                raise CheckpointError(
                    f"{path} states no model configuration and its feature size {tz[1]} does not tell the image "
                    "size; build the MMNet with the options it was trained with and load_state_dict(state['model'])"
                )
            config["image_size"] = _IMAGE_SIZE_OF_DZ[tz[1]]
    lstm = shape("contextual.lstm.weight_hh_l0")
    if lstm is not None and len(lstm) == 2:
        config["dr"] = lstm[1]
    config["use_memory_read"] = "tc.weight" in weights
    config["use_query_branch"] = any(k.startswith("query_block.") for k in weights)
    config["use_contextual_learner"] = any(k.startswith("contextual.") for k in weights)
    if config["use_query_branch"]:
        config["query_branch"] = "residual" if "query_gate" in weights else "paper"
    assumed = ["decision", "memory_slots"]
    if "log_scale" in weights:
        config["similarity_scale"] = "learned"
    else:
        assumed.append("similarity_scale")
    warnings.warn(
        f"{path} states no model configuration: rebuilt from the shapes of its weights, with "
        f"{', '.join(assumed)} at their defaults",
        stacklevel=3,
    )
    return config


def _check_fits(expected: Dict[str, Any], weights: Dict[str, Any], path: Any) -> None:
    """Refuse weights whose names or shapes differ from the model's (before it is allocated)."""
    from ..checkpoints import CheckpointError, shorten

    def few(keys: List[str]) -> str:
        return shorten(", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")) or "none"

    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the weights do not fit its model configuration (missing: {few(missing)}; "
            f"unexpected: {few(unexpected)}); the checkpoint was edited or written by other code"
        )
    wrong = [
        f"{k} {tuple(getattr(weights[k], 'shape', ()))} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if isinstance(v, torch.Tensor) and (not isinstance(weights[k], torch.Tensor) or weights[k].shape != v.shape)
    ]
    if wrong:
        raise CheckpointError(
            f"{path}: the weights do not fit its model configuration ({few(wrong)}); the checkpoint was edited "
            "or written by other code"
        )
