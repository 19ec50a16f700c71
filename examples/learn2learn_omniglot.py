"""MM-Net on Omniglot with learn2learn's own task pipeline.

Training draws tasks from a learn2learn ``Taskset`` (the ``l2l.vision.benchmarks`` recipe:
``NWays``, ``KShots``, ``LoadData``, ``RemapLabels``, ``ConsecutiveLabels``) built over our
Omniglot loader (Vinyals split, 28x28, rotations as classes); evaluation splits the test
tasks with ``l2l.data.partition_task`` and scores them with ``l2l.utils.accuracy``.

    pip install learn2learn==0.2.0                # Python <= 3.10; on 3.11+ see the README
    MMNET_DATA_ROOT=/path/to/datasets python learn2learn_omniglot.py --steps 1000

``MMNET_DATA_ROOT`` (or ``--data-root``) is the folder holding ``omniglot/``;
``--dataset glyphs`` uses the embedded data set instead and needs no files.
"""

from __future__ import annotations

import argparse
import math
import os
import random

import learn2learn as l2l
import torch

from mmnet_plugin.data import load_dataset
from mmnet_plugin.integrations.learn2learn import episode_from_learn2learn, meta_dataset
from mmnet_plugin.models import MMNet


def make_taskset(dataset, ways: int, shots: int, queries: int, num_tasks: int = -1) -> l2l.data.Taskset:
    """A benchmark-style learn2learn taskset over one of our data sets."""
    dataset = meta_dataset(dataset)  # l2l.data.MetaDataset, labels read from `targets`
    # FusedNWaysKShots(dataset, n=ways, k=shots + queries) works too, but its constructor
    # scans every item once per class (minutes on Omniglot's 4112 training classes).
    transforms = [
        l2l.data.transforms.NWays(dataset, n=ways),
        l2l.data.transforms.KShots(dataset, k=shots + queries),
        l2l.data.transforms.LoadData(dataset),
        l2l.data.transforms.RemapLabels(dataset),
        l2l.data.transforms.ConsecutiveLabels(dataset),
    ]
    return l2l.data.Taskset(dataset, task_transforms=transforms, num_tasks=num_tasks)


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
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    random.seed(args.seed)  # learn2learn samples tasks with Python's `random`
    torch.manual_seed(args.seed)
    kwargs = {"data_root": args.data_root} if args.dataset == "omniglot" else {}
    train_tasks = make_taskset(load_dataset(args.dataset, split="train", **kwargs), args.ways, args.shots, args.queries)
    test_tasks = make_taskset(
        load_dataset(args.dataset, split="test", **kwargs), args.ways, args.shots, args.queries, num_tasks=args.episodes
    )

    device = torch.device(args.device)
    model = MMNet(in_channels=1, image_size=28, shuffle_support=True).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    model.train()
    for step in range(1, args.steps + 1):
        episodes = [
            episode_from_learn2learn(train_tasks.sample(), shots=args.shots).to(device) for _ in range(args.meta_batch)
        ]
        loss = model.loss(episodes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}")

    model.eval()
    accuracies = []
    with torch.no_grad():
        for i in range(args.episodes):
            data, labels = test_tasks[i]
            (support_x, support_y), (query_x, query_y) = l2l.data.partition_task(data, labels, shots=args.shots)
            scores = model(support_x.to(device), support_y.to(device), query_x.to(device))
            accuracies.append(l2l.utils.accuracy(scores, query_y.to(device)).item())
    mean = sum(accuracies) / len(accuracies)
    std = math.sqrt(sum((a - mean) ** 2 for a in accuracies) / len(accuracies))
    ci95 = 1.96 * std / math.sqrt(len(accuracies))
    print(
        f"test accuracy: {100 * mean:.2f} +- {100 * ci95:.2f}% "
        f"({args.ways}-way {args.shots}-shot, {len(accuracies)} tasks, {args.queries} queries per class)"
    )


if __name__ == "__main__":
    main()
