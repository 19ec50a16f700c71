"""Accuracy over test episodes, with the 95% confidence interval of the field.

The protocol: N-way K-shot test episodes of classes never seen in training,
15 queries per class by default, mean accuracy over the episodes and the interval
``1.96 * std / sqrt(episodes)`` (population std over the per-episode accuracies).

Under several processes (``torchrun``; pass the
:class:`~mmnet_plugin.distributed.DistributedContext`), every rank reads the same episode
stream, scores the episodes whose index is its :func:`~mmnet_plugin.distributed.shard`
(``i % world_size == rank``) and the per-episode accuracies are gathered in index order: the
accuracy, interval, per-episode list and fingerprint are those of one process.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from .distributed import SINGLE_PROCESS, DistributedContext, gather_objects
from .episodes import EMPTY_FINGERPRINT, Episode, EpisodeSampler, chain_fingerprint, require_episode

__all__ = ["EvaluationResult", "evaluate", "confidence_interval"]

Predictor = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def confidence_interval(accuracies: Iterable[float]) -> float:
    """Half width of the 95% interval of the mean: ``1.96 * std / sqrt(n)``."""
    acc = np.asarray(list(accuracies), dtype=np.float64)
    if acc.size == 0:
        raise ValueError("no accuracies to summarise: evaluate at least one episode")
    return float(1.96 * acc.std() / math.sqrt(acc.size))


@dataclass
class EvaluationResult:
    """What an evaluation measured.

    Attributes:
        accuracy: mean accuracy over episodes (fraction, 0..1).
        ci95: half width of the 95% confidence interval (fraction).
        episodes: number of test episodes n.
        queries_per_class: query images per class (the smallest, if episodes differ).
        fingerprint: chained hash of the episodes' class ids and image indices.
        per_episode: accuracy of every episode, in order.
        ms_per_episode: mean wall time of a test episode in milliseconds (under several
            processes: the ranks' scoring time summed, over the episodes; so a per-episode
            cost, not the wall time of the run divided by n).
    """

    accuracy: float
    ci95: float
    episodes: int
    queries_per_class: int
    fingerprint: str
    per_episode: List[float] = field(default_factory=list)
    ms_per_episode: float = float("nan")

    def summary(self) -> str:
        """One line: accuracy +- interval, n, queries and fingerprint."""
        return (
            f"accuracy {100 * self.accuracy:.2f} +- {100 * self.ci95:.2f}% "
            f"(95% CI, n={self.episodes} episodes, {self.queries_per_class} queries/class) "
            f"fingerprint {self.fingerprint[:16]}"
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _as_predictor(model: Union[torch.nn.Module, Predictor]) -> Predictor:
    predict = getattr(model, "predict", None)
    if callable(predict):
        return predict
    if callable(model):

        def predict_from_scores(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
            scores = model(sx, sy, qx)
            want = (int(qx.shape[0]), int(sy.max()) + 1)
            got = (
                f"scores of shape {tuple(scores.shape)}"
                if isinstance(scores, torch.Tensor)
                else f"a {type(scores).__name__}"
            )
            if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != want:
                raise ValueError(
                    f"the model returned {got} for an episode of {want[0]} queries and {want[1]} classes; "
                    f"a callable model must return class scores [n_query, n_way] = {list(want)}"
                )
            return scores.argmax(dim=-1)

        return predict_from_scores
    raise ValueError("model must be callable as model(support_x, support_y, query_x) or have .predict")


@torch.no_grad()
def evaluate(
    model: Union[torch.nn.Module, Predictor],
    episodes: Iterable[Episode],
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    desc: str = "test",
    batch_episodes: int = 1,
    context: Optional[DistributedContext] = None,
) -> EvaluationResult:
    """Accuracy of ``model`` over ``episodes``.

    Args:
        model: an :class:`~mmnet_plugin.MMNet` (or any module with ``predict``), or a
            callable ``(support_x, support_y, query_x) -> scores [n_query, n_way]``.
            A module is put in ``eval()`` mode for the evaluation and restored after.
        episodes: test episodes with ``query_y`` set.
        device: where to run (default: the module's device, else CPU).
        progress: show a tqdm bar.
        desc: the bar's label.
        batch_episodes: score this many episodes in one call of the model's
            ``predict_batch`` (MM-Net has one), which is much faster on a GPU. Episodes are
            still scored independently (eval mode), so the result is the same as one by
            one up to float rounding. Ignored for models without ``predict_batch``.
        context: a :class:`~mmnet_plugin.distributed.DistributedContext` with more than one
            rank: every rank must call ``evaluate`` with the same episodes (the same seeded
            sampler); each scores its share of them by index and the result, on every rank,
            is the same as one process's (same per-episode accuracies in the same order, mean,
            interval and fingerprint). ``None``: this process scores them all.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        ValueError: if there are no episodes, an item is not an :class:`Episode` (easyfsl
            5-tuples: wrap the loader with ``mmnet_plugin.integrations.easyfsl.EasyFSLEpisodes``),
            an episode has no query labels, ``batch_episodes < 1``, or the model returns
            predictions of the wrong shape: a callable must return scores ``[n_query, n_way]``
            for exactly the episode's classes (scores for more or fewer classes are refused),
            a ``predict`` one label per query. Under several processes an error on one rank is
            raised on every rank (none is left waiting).
    """
    import time

    if isinstance(batch_episodes, bool) or int(batch_episodes) < 1:
        raise ValueError(f"batch_episodes must be a positive integer; got {batch_episodes!r}")
    ctx = context or SINGLE_PROCESS
    predictor = _as_predictor(model)
    predict_batch = getattr(model, "predict_batch", None)
    chunk_size = int(batch_episodes) if callable(predict_batch) else 1
    was_training = isinstance(model, torch.nn.Module) and model.training
    if isinstance(model, torch.nn.Module):
        model.eval()
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else "cpu"
    device = torch.device(device or "cpu")
    if ctx.enabled and isinstance(episodes, EpisodeSampler) and episodes.episodes is not None:
        # the other ranks' episodes are drawn without reading their images
        stream: Iterable[Tuple[Optional[Episode], Optional[bytes]]] = episodes.iter_shard(ctx.rank, ctx.world_size)
    else:
        stream = ((ep, None) for ep in episodes)
    if progress and ctx.is_main:
        from tqdm.auto import tqdm

        stream = tqdm(stream, desc=desc, leave=False, total=_len_or_none(episodes))
    accs: List[float] = []
    mine: List[int] = []  # the indices of the episodes this rank scored
    queries = None
    fp = EMPTY_FINGERPRINT
    elapsed = 0.0

    def score(chunk: List[Episode]) -> None:
        nonlocal elapsed
        chunk = [ep.to(device) for ep in chunk]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        if chunk_size > 1:
            preds = predict_batch(chunk)
        else:
            preds = [predictor(e.support_x, e.support_y, e.query_x) for e in chunk]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed += time.perf_counter() - t0
        for e, pred in zip(chunk, preds):
            pred = pred.reshape(-1)
            if pred.numel() != e.query_y.numel():
                raise ValueError(
                    f"the model gave {pred.numel()} predictions for {e.query_y.numel()} queries; a callable "
                    "model must return class scores [n_query, n_way] (or have .predict returning [n_query])"
                )
            accs.append(float((pred.to(e.query_y.device) == e.query_y).float().mean()))

    pending: List[Episode] = []
    n_seen = 0
    error: Optional[BaseException] = None
    try:
        for ep, skipped_bytes in stream:
            if ep is None and skipped_bytes is not None:  # another rank's episode, drawn but not loaded
                fp = chain_fingerprint(fp, skipped_bytes)
                queries = episodes.queries if queries is None else min(queries, episodes.queries)
                n_seen += 1
                continue
            ep = require_episode(ep, "evaluate")
            if ep.query_y is None:
                raise ValueError("cannot score an episode without query labels (query_y is None)")
            fp = chain_fingerprint(fp, ep.fingerprint_bytes())
            q_per_class = int(torch.bincount(ep.query_y).min())
            queries = q_per_class if queries is None else min(queries, q_per_class)
            index, n_seen = n_seen, n_seen + 1
            if index % ctx.world_size != ctx.rank:
                continue
            mine.append(index)
            pending.append(ep)
            if len(pending) >= chunk_size:
                score(pending)
                pending = []
        if pending:
            score(pending)
    except Exception as exc:
        if not ctx.enabled:
            raise
        error = exc
    finally:
        if was_training:
            model.train()
    if ctx.enabled:
        gathered = gather_objects(
            (None if error is None else f"{type(error).__name__}: {error}", mine, accs, elapsed, n_seen, fp), ctx
        )
        if error is not None:
            raise error
        failed = [(r, g[0]) for r, g in enumerate(gathered) if g[0] is not None]
        if failed:
            raise ValueError(f"evaluation failed on rank {failed[0][0]}: {failed[0][1]}")
        if len({(g[4], g[5]) for g in gathered}) != 1:
            raise ValueError(
                f"the ranks were given different episode streams (lengths {[g[4] for g in gathered]}, "
                "fingerprints differ); give every rank the same seeded sampler"
            )
        by_index = {i: a for g in gathered for i, a in zip(g[1], g[2])}
        accs = [by_index[i] for i in range(n_seen)]
        elapsed = float(sum(g[3] for g in gathered))
    if not accs:
        raise ValueError("no test episodes were given")
    acc = np.asarray(accs)
    return EvaluationResult(
        accuracy=float(acc.mean()),
        ci95=confidence_interval(acc),
        episodes=len(accs),
        queries_per_class=int(queries),
        fingerprint=fp,
        per_episode=[float(a) for a in accs],
        ms_per_episode=1000.0 * elapsed / len(accs),
    )


def _len_or_none(obj: object) -> Optional[int]:
    try:
        return len(obj)  # type: ignore[arg-type]
    except TypeError:
        return None
