"""MM-Net on Omniglot with torchmeta's own meta-dataset, splitter and loader.

Our Omniglot loader (Vinyals split, 28x28, rotations as classes) becomes a torchmeta
``ClassDataset`` (``FewShotClassDataset``); torchmeta's ``CombinationMetaDataset``,
``Categorical``, ``ClassSplitter`` and ``BatchMetaDataLoader`` make the tasks, for training
and for the meta-test evaluation, whose accuracy is computed as torchmeta's examples do.
(torchmeta's own ``Omniglot`` class wants its own HDF5 conversion and downloads; ours reads
the official archives in place.)

    pip install h5py ordered-set requests tqdm && pip install --no-deps torchmeta==1.8.0
    MMNET_DATA_ROOT=/path/to/datasets python torchmeta_omniglot.py --steps 1000

``MMNET_DATA_ROOT`` (or ``--data-root``) is the folder holding ``omniglot/``;
``--dataset glyphs`` uses the embedded data set instead and needs no files.
"""

from __future__ import annotations

import argparse
import math
import os
import random

import torch

from mmnet_plugin.integrations.torchmeta import patch_torchmeta

# torchmeta 1.8.0 needs this on current torch/torchvision. At the top level, so DataLoader
# workers started with "spawn" run it too.
patch_torchmeta()

from torchmeta.transforms import Categorical, ClassSplitter  # noqa: E402
from torchmeta.utils.data import BatchMetaDataLoader, CombinationMetaDataset  # noqa: E402

from mmnet_plugin.data import load_dataset  # noqa: E402
from mmnet_plugin.integrations.torchmeta import FewShotClassDataset, episodes_from_torchmeta  # noqa: E402
from mmnet_plugin.models import MMNet  # noqa: E402


def make_meta_dataset(dataset, ways: int, shots: int, queries: int) -> CombinationMetaDataset:
    """torchmeta tasks over one of our data sets: ``ways`` classes, ``shots`` + ``queries`` each."""
    return CombinationMetaDataset(
        FewShotClassDataset(dataset),
        num_classes_per_task=ways,
        target_transform=Categorical(ways),
        dataset_transform=ClassSplitter(shuffle=True, num_train_per_class=shots, num_test_per_class=queries),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="omniglot", choices=["omniglot", "glyphs"])
    parser.add_argument("--data-root", default=os.environ.get("MMNET_DATA_ROOT"))
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=500, help="training steps")
    parser.add_argument("--meta-batch", type=int, default=4, help="tasks per step")
    parser.add_argument("--episodes", type=int, default=200, help="test tasks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    random.seed(args.seed)  # torchmeta's random sampler draws classes with Python's `random`
    torch.manual_seed(args.seed)  # ... and Categorical its label order with torch's
    kwargs = {"data_root": args.data_root} if args.dataset == "omniglot" else {}
    train = make_meta_dataset(load_dataset(args.dataset, split="train", **kwargs), args.ways, args.shots, args.queries)
    test = make_meta_dataset(load_dataset(args.dataset, split="test", **kwargs), args.ways, args.shots, args.queries)
    train_loader = BatchMetaDataLoader(train, batch_size=args.meta_batch, shuffle=True, num_workers=args.num_workers)
    test_loader = BatchMetaDataLoader(test, batch_size=1, shuffle=True, num_workers=args.num_workers)

    device = torch.device(args.device)
    model = MMNet(in_channels=1, image_size=28, shuffle_support=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    model.train()
    for step, batch in enumerate(train_loader, start=1):
        episodes = [ep.to(device) for ep in episodes_from_torchmeta(batch)]
        loss = model.loss(episodes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}")
        if step >= args.steps:
            break

    model.eval()
    accuracies = []
    with torch.no_grad():
        for batch in test_loader:
            train_inputs, train_targets = batch["train"]
            test_inputs, test_targets = batch["test"]
            for task in range(train_inputs.size(0)):
                scores = model(
                    train_inputs[task].to(device), train_targets[task].to(device), test_inputs[task].to(device)
                )
                predictions = scores.argmax(dim=-1)
                accuracies.append(predictions.eq(test_targets[task].to(device)).float().mean().item())
            if len(accuracies) >= args.episodes:
                break
    mean = sum(accuracies) / len(accuracies)
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))
    ci95 = 1.96 * std / math.sqrt(len(accuracies))
    print(
        f"test accuracy: {100 * mean:.2f} +- {100 * ci95:.2f}% "
        f"({args.ways}-way {args.shots}-shot, {len(accuracies)} tasks, {args.queries} queries per class)"
    )


if __name__ == "__main__":
    main()
