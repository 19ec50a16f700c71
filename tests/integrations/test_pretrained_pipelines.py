"""The shipped Omniglot weights from a torchvision-style pipeline: PIL images as torchvision's
``Omniglot`` (and learn2learn's, easyfsl's loaders) give them, dark ink on white at 105x105, through
``omniglot_transform``, sampled by easyfsl's ``TaskSampler``, score what our own loader's images score."""

import zipfile

import pytest
import torch
from PIL import Image

import mmnet_plugin.pretrained as pretrained
from mmnet_plugin import MMNet, evaluate

CHARACTERS = 12  # the first characters of the evaluation archive (all 20 drawers each)


def _pil_images(omniglot_root, characters):
    """``images_evaluation.zip`` members of the first characters, opened as torchvision opens them."""
    with zipfile.ZipFile(omniglot_root / "images_evaluation.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))
        by_char = {}
        for n in names:
            by_char.setdefault(n.rsplit("/", 1)[0], []).append(n)
        chosen = sorted(by_char)[:characters]
        images = []
        for char in chosen:
            for n in sorted(by_char[char]):
                with zf.open(n) as fh:
                    images.append(Image.open(fh).convert("L"))
    return [c.split("/", 1)[1] for c in chosen], images


def test_transform_gives_the_loaders_pixels_and_easyfsl_the_same_accuracy(omniglot_root, omniglot_cache):
    pytest.importorskip("easyfsl")
    from torch.utils.data import DataLoader

    from mmnet_plugin.integrations.easyfsl import EasyFSLEpisodes, patch_easyfsl

    patch_easyfsl()  # easyfsl 1.5.0's TaskSampler on current torch
    from easyfsl.samplers import TaskSampler

    names, pil = _pil_images(omniglot_root, CHARACTERS)
    transform = pretrained.omniglot_transform()
    theirs = torch.stack([transform(im) for im in pil])  # [n, 1, 28, 28]
    store = omniglot_cache.store
    first = store.characters.index(names[0])
    assert store.characters[first : first + CHARACTERS] == names
    ours = store.images[first * 20 : (first + CHARACTERS) * 20].float() / 255.0
    assert torch.equal(theirs, ours), "omniglot_transform must reproduce the loader's pixels exactly"
    inverted = torch.stack([transform(im.point(lambda v: 255 - v)) for im in pil[:5]])
    assert not torch.equal(inverted, ours[:5])  # the polarity matters: the check can fail

    if not pretrained.available():
        pytest.skip("no weights shipped in this installation")
    labels = [i // 20 for i in range(len(pil))]

    class Images(torch.utils.data.Dataset):
        def __init__(self, tensors):
            self.tensors = tensors

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return self.tensors[i], labels[i]

        def get_labels(self):
            return labels

    tasks = list(TaskSampler(Images(theirs), n_way=5, n_shot=1, n_query=5, n_tasks=12))  # index lists
    sampler = TaskSampler(Images(theirs), n_way=5, n_shot=1, n_query=5, n_tasks=12)

    def episodes(tensors):
        loader = DataLoader(Images(tensors), batch_sampler=tasks, collate_fn=sampler.episodic_collate_fn)
        return list(EasyFSLEpisodes(loader))

    model = MMNet.pretrained("omniglot")
    via_easyfsl = evaluate(model, episodes(theirs))
    via_loader = evaluate(model, episodes(ours))
    assert via_easyfsl.per_episode == via_loader.per_episode
    assert via_easyfsl.accuracy > 0.6  # far above chance (0.2): the weights see ink as they were trained to
