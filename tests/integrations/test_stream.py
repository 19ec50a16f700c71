"""The base of the three framework streams: a limit that draws nothing more, a device move,
and one validation of ``episodes``."""

import pytest
import torch

from mmnet_plugin.episodes import Episode
from mmnet_plugin.integrations.stream import EpisodeStream


class _Counting(EpisodeStream):
    drawn = 0

    def convert(self):
        for label in self.source:
            self.drawn += 1
            x = torch.zeros(2, 1, 4, 4)
            yield Episode(x, torch.tensor([0, 1]), x[:1], torch.tensor([label]))


def test_the_limit_draws_nothing_beyond_it():
    stream = _Counting([0, 1, 0, 1], episodes=2)
    assert [int(ep.query_y[0]) for ep in stream] == [0, 1] and stream.drawn == 2
    assert len(list(_Counting([0, 1, 0]))) == 3


@pytest.mark.parametrize("episodes", [0, -1, True])
def test_a_non_positive_limit_is_refused(episodes):
    with pytest.raises(ValueError, match="episodes must be at least 1"):
        _Counting([], episodes=episodes)


def test_the_three_frameworks_share_the_base():
    from mmnet_plugin.integrations.easyfsl import EasyFSLEpisodes
    from mmnet_plugin.integrations.learn2learn import TasksetEpisodes
    from mmnet_plugin.integrations.torchmeta import TorchmetaEpisodes

    for cls in (EasyFSLEpisodes, TasksetEpisodes, TorchmetaEpisodes):
        assert issubclass(cls, EpisodeStream)
    assert EasyFSLEpisodes([], episodes=3).loader == []
