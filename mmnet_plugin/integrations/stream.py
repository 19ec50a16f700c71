"""The one base of the three framework streams: a framework's source of tasks as a stream of
:class:`~mmnet_plugin.episodes.Episode` for :class:`~mmnet_plugin.Trainer` and
:func:`~mmnet_plugin.evaluate`."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from ..episodes import Episode

__all__ = ["EpisodeStream"]


class EpisodeStream:
    """A source of tasks as a stream of episodes. A subclass says how the source becomes
    episodes (:meth:`convert`); this base stops after ``episodes`` (drawing nothing more from
    the source) and moves each episode to ``device``.

    Args:
        source: the framework's loader or task set.
        episodes: stop after this many (``None``: as long as the source lasts).
        device: move each episode there (``None``: leave it where it is).

    Raises:
        ValueError: for a non-positive ``episodes``.
    """

    def __init__(self, source: Any, episodes: Optional[int] = None, device: Optional[str] = None) -> None:
        if episodes is not None and (isinstance(episodes, bool) or int(episodes) < 1):
            raise ValueError(f"episodes must be at least 1 (or None); got {episodes!r}")
        self.source = source
        self.episodes = None if episodes is None else int(episodes)
        self.device = device

    def convert(self) -> Iterator[Episode]:
        """The source's tasks as episodes, in order (lazily)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Episode]:
        converted = self.convert()
        n = 0
        while self.episodes is None or n < self.episodes:
            try:
                ep = next(converted)
            except StopIteration:
                return
            n += 1
            yield ep if self.device is None else ep.to(self.device)
