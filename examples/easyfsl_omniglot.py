"""MM-Net on Omniglot with easyfsl's own sampler, training loop and evaluation.

Our Omniglot loader (Vinyals split, 28x28, rotations as classes) has ``get_labels()``, so
easyfsl's ``TaskSampler`` draws tasks from it directly; ``MMNet`` from
``mmnet_plugin.integrations.easyfsl`` is an easyfsl ``FewShotClassifier``, trained with the
usual easyfsl episodic loop and scored with ``easyfsl.utils.evaluate``.

    pip install 'mmnet-plugin[easyfsl]'
    MMNET_DATA_ROOT=/path/to/datasets python easyfsl_omniglot.py --steps 2000

``MMNET_DATA_ROOT`` (or ``--data-root``) is the folder holding ``omniglot/``;
``--dataset glyphs`` uses the embedded data set instead and needs no files.
"""

from __future__ import annotations

import argparse
import os
import random

import torch
from easyfsl.samplers import TaskSampler
from easyfsl.utils import evaluate
from torch.utils.data import DataLoader

from mmnet_plugin.data import load_dataset
from mmnet_plugin.integrations.easyfsl import MMNet


def task_loader(dataset, ways: int, shots: int, queries: int, tasks: int) -> DataLoader:
    """easyfsl's episodic loader: one task per batch, as a 5-tuple."""
    sampler = TaskSampler(dataset, n_way=ways, n_shot=shots, n_query=queries, n_tasks=tasks)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0, collate_fn=sampler.episodic_collate_fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="omniglot", choices=["omniglot", "glyphs"])
    parser.add_argument("--data-root", default=os.environ.get("MMNET_DATA_ROOT"))
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--steps", type=int, default=2000, help="training tasks (one per step, as in easyfsl)")
    parser.add_argument("--episodes", type=int, default=200, help="test tasks")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    random.seed(args.seed)  # easyfsl's TaskSampler draws with Python's `random`
    torch.manual_seed(args.seed)
    kwargs = {"data_root": args.data_root} if args.dataset == "omniglot" else {}
    train_set = load_dataset(args.dataset, split="train", **kwargs)
    test_set = load_dataset(args.dataset, split="test", **kwargs)
    train_loader = task_loader(train_set, args.ways, args.shots, args.queries, args.steps)
    test_loader = task_loader(test_set, args.ways, args.shots, args.queries, args.episodes)

    model = MMNet(in_channels=1, image_size=28, shuffle_support=True).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    model.train()
    for step, (support_images, support_labels, query_images, query_labels, _) in enumerate(train_loader, start=1):
        optimizer.zero_grad()
        model.process_support_set(support_images.to(args.device), support_labels.to(args.device))
        # MM-Net's own loss (the paper's Eq. 8); easyfsl's usual
        # nn.CrossEntropyLoss()(model(query_images), query_labels) works as well.
        loss = model.episode_loss(query_images.to(args.device), query_labels.to(args.device))
        loss.backward()
        optimizer.step()
        if step % 200 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  loss {loss.item():.4f}")

    accuracy = evaluate(model, test_loader, device=args.device, use_tqdm=False)
    print(
        f"test accuracy: {100 * accuracy:.2f}% "
        f"({args.ways}-way {args.shots}-shot, {args.episodes} tasks, {args.queries} queries per class)"
    )


if __name__ == "__main__":
    main()
