"""MM-Net's memory module (paper section 3.2-3.3): write controller and read controller.

Both work on a *batch* of episodes at once. Episodes may have different numbers of support
items, so inputs are padded to the longest episode: ``[B, N, ...]`` with per-episode
``lengths`` (valid items come first; positions ``>= lengths[b]`` are ignored).

Write controller (the README's "MM-Net as built here"). The support items are
written in the order given. The first item opens a slot. Each later item ``n`` finds the
used slot whose key has the largest dot product with its key-space vector ``zk_n``; if that
slot's label equals ``y_n`` the key becomes ``normalize(m + zk_n)`` (Eq. 4), otherwise a new
slot is opened with ``normalize(zk_n)`` and label ``y_n``; if all ``M`` slots are used the
item is merged into the nearest key as in Eq. 4 whatever its label. New slots are stored
L2-normalised (our choice; the paper normalises only merged keys, and mixing raw and
unit-norm keys would bias the dot-product search toward the raw ones).

The slot choice is discrete; the keys are differentiable functions of ``zk``. The write is
sequential over the support items by definition, so it runs in two passes. The first, without
autograd, runs the controller on values (one set of tensor ops over all episodes per support
position) and records the slot each item goes to. The second rebuilds the keys from ``zk``
with gradients, folding each slot's items in write order, one step per rank within a slot for
all slots at once: the graph then has about ``k`` steps for k-shot episodes instead of one per
support item, and the keys are the same numbers the first pass computed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["MemoryState", "write_memory", "read_memory"]


class MemoryState(NamedTuple):
    """The memory after the write controller, for a batch of ``B`` episodes.

    Attributes:
        keys: ``[B, M, Dm]`` memory keys ``m^k``; unused slots are zero.
        labels: ``[B, M]`` memory values ``m^v`` (episode labels), ``-1`` for unused slots.
        used: ``[B, M]`` bool, which slots are used (always a prefix of the slots).
        n_used: ``[B]`` number of used slots per episode.
    """

    keys: torch.Tensor
    labels: torch.Tensor
    used: torch.Tensor
    n_used: torch.Tensor


def write_memory(
    zk: torch.Tensor,
    labels: torch.Tensor,
    lengths: torch.Tensor,
    slots: Optional[int] = None,
    eps: float = 1e-12,
) -> MemoryState:
    """Write the support items of a batch of episodes into memory (paper section 3.2).

    Args:
        zk: ``[B, N, Dm]`` key-space vectors ``zk_n = Tz z_n`` in write order (padded).
        labels: ``[B, N]`` integer labels ``y_n`` (padding values are ignored).
        lengths: ``[B]`` number of valid support items per episode (each ``>= 1``).
        slots: memory size ``M`` per episode; ``None`` means as many slots as the
            episode has support items, so the memory never overflows.
        eps: guard of the L2 normalisation.

    Returns:
        A :class:`MemoryState` with ``min(M, N)`` slot positions (``N`` when ``slots`` is
        ``None``).

    Raises:
        ValueError: on inconsistent shapes, an empty episode, or ``slots < 1``.
    """
    if zk.dim() != 3:
        raise ValueError(f"zk must be [B, N, Dm]; got shape {tuple(zk.shape)}")
    b, n, _ = zk.shape
    if labels.shape != (b, n):
        raise ValueError(f"labels must be [B, N] = {(b, n)} like zk; got {tuple(labels.shape)}")
    if lengths.shape != (b,):
        raise ValueError(f"lengths must be [B] = ({b},); got {tuple(lengths.shape)}")
    if n == 0 or b == 0:
        raise ValueError("write_memory needs at least one episode with at least one support item")
    lengths = lengths.to(device=zk.device, dtype=torch.long)
    if slots is not None:
        if isinstance(slots, bool) or int(slots) < 1:
            raise ValueError(f"memory slots must be a positive integer or None; got {slots!r}")
        width = min(int(slots), n)
        capacity = torch.full_like(lengths, int(slots))
    else:
        width = n
        capacity = lengths
    labels = labels.to(device=zk.device, dtype=torch.long)

    with torch.no_grad():  # the slot choices are discrete: find them without building a graph
        target, slot_labels, used, n_used = _choose_slots(zk.detach(), labels, lengths, width, capacity, eps)
    keys = _build_keys(zk, target, width, eps)
    return MemoryState(keys, slot_labels, used, n_used)


def _choose_slots(
    zk: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, width: int, capacity: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the write controller on values alone: the slot each item is written to.

    Returns:
        ``(target, slot_labels, used, n_used)``: ``target`` ``[B, N]`` is the slot of each
        item (``-1`` for padding); the others as in :class:`MemoryState`.
    """
    b, n, dm = zk.shape
    keys = zk.new_zeros(b, width, dm)
    slot_labels = labels.new_full((b, width), -1)
    used = torch.zeros(b, width, dtype=torch.bool, device=zk.device)
    n_used = torch.zeros(b, dtype=torch.long, device=zk.device)
    targets = labels.new_full((b, n), -1)
    batch = torch.arange(b, device=zk.device)
    neg_inf = torch.tensor(float("-inf"), dtype=zk.dtype, device=zk.device)
    for t in range(n):
        active = lengths > t  # [B]
        z = zk[:, t]  # [B, Dm]
        y = labels[:, t]  # [B]
        sim = torch.bmm(keys, z.unsqueeze(2)).squeeze(2)
        nearest = torch.where(used, sim, neg_inf).argmax(dim=1)  # [B]
        current = keys[batch, nearest]
        merge = (n_used > 0) & ((slot_labels[batch, nearest] == y) | (n_used >= capacity))
        target = torch.where(merge, nearest, n_used.clamp(max=width - 1))
        new_key = torch.where(
            merge.unsqueeze(1), F.normalize(current + z, dim=1, eps=eps), F.normalize(z, dim=1, eps=eps)
        )
        # index writes (no boolean masks): inactive rows write back what their target slot holds
        keys[batch, target] = torch.where(active.unsqueeze(1), new_key, keys[batch, target])
        opened = active & ~merge
        slot_labels[batch, target] = torch.where(opened, y, slot_labels[batch, target])
        used[batch, target] = used[batch, target] | opened
        n_used = n_used + opened.long()
        targets[:, t] = torch.where(active, target, torch.full_like(target, -1))
    return targets, slot_labels, used, n_used


def _build_keys(zk: torch.Tensor, target: torch.Tensor, width: int, eps: float) -> torch.Tensor:
    """The memory keys as differentiable functions of ``zk``, given each item's slot.

    A slot's key is its items folded in write order, ``normalize(z_first)`` and then
    ``normalize(m + z)`` per later item (Eq. 4): the same operations the write controller
    performs. Instead of one step per support item over all slots, this takes one step per
    *rank* within a slot (the r-th item written to each slot, for all slots at once), so the
    autograd graph has as many steps as the most-written slot has items (about k for k-shot
    episodes) rather than as many as the episode has support items.
    """
    b, n, dm = zk.shape
    valid = target >= 0
    slot = target.clamp_min(0)
    # rank of each item among the items written to its slot before it
    onehot = F.one_hot(slot, width) & valid.unsqueeze(2)  # [B, N, M]
    rank = ((onehot.cumsum(dim=1) - 1) * onehot).sum(dim=2)  # [B, N]
    depth = int(onehot.sum(dim=1).max())  # items in the most-written slot
    # item_of[b, r, m]: the item of rank r in slot m (n = none)
    item_of = target.new_full((b, depth * width + 1), n)
    flat = torch.where(valid, rank * width + slot, torch.full_like(slot, depth * width))
    item_of.scatter_(1, flat, torch.arange(n, device=zk.device).expand(b, n))
    item_of = item_of[:, : depth * width].view(b, depth, width)
    padded = torch.cat([zk, zk.new_zeros(b, 1, dm)], dim=1)  # row n: no item
    keys = zk.new_zeros(b, width, dm)
    for r in range(depth):
        idx = item_of[:, r]  # [B, M]
        z = padded.gather(1, idx.unsqueeze(2).expand(b, width, dm))
        has = (idx < n).unsqueeze(2)
        folded = F.normalize(keys + z if r else z, dim=2, eps=eps)
        keys = torch.where(has, folded, keys)
    return keys


def read_memory(zk: torch.Tensor, keys: torch.Tensor, used: torch.Tensor) -> torch.Tensor:
    """Read controller (paper Eq. 5-6): attention of each support item over the used slots.

    ``a_{i,n} = softmax_i(zk_n . m_i)`` over the used slots of the item's own episode and
    ``c_n = sum_i a_{i,n} m_i``. The shortcut ``g = Tc c + z`` is applied by the caller.

    Args:
        zk: ``[B, N, Dm]`` key-space vectors of the support items (padded).
        keys: ``[B, M, Dm]`` memory keys.
        used: ``[B, M]`` bool mask of used slots (at least one per episode).

    Returns:
        ``c``: ``[B, N, Dm]`` aggregated memory vectors (rows of padded items are
        meaningless but finite).

    Raises:
        ValueError: on inconsistent shapes.
    """
    if zk.dim() != 3 or keys.dim() != 3 or zk.shape[0] != keys.shape[0] or zk.shape[2] != keys.shape[2]:
        raise ValueError(
            f"read_memory needs zk [B, N, Dm] and keys [B, M, Dm]; got {tuple(zk.shape)} and {tuple(keys.shape)}"
        )
    if used.shape != keys.shape[:2]:
        raise ValueError(f"used must be [B, M] = {tuple(keys.shape[:2])}; got {tuple(used.shape)}")
    scores = torch.bmm(zk, keys.transpose(1, 2))  # [B, N, M]
    scores = scores.masked_fill(~used.unsqueeze(1), float("-inf"))
    attention = torch.softmax(scores, dim=2)
    return torch.bmm(attention, keys)
