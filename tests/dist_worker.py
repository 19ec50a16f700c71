"""The ranks' side of tests/test_distributed.py, run by ``torchrun --nproc-per-node 2`` (gloo, CPU).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/dist_worker.py OUT``
writes into OUT (rank 0 alone unless named otherwise):

The model is float64 (see :func:`model`). Files:

* ``grads.pt``: the gradient of one 5-episode batch (``Trainer.backward``) with and without
  ``sync_bn``, per rank (``grads_rank<r>.pt``);
* ``ckpt.pt`` and ``log.jsonl``: 2 training steps with ``sync_bn`` (5 episodes a step, so the
  two ranks hold 3 and 2);
* ``eval_rank<r>.json``: that checkpoint evaluated on 7 glyph test episodes, sharded (a
  sampler: the other ranks' images are never read); ``eval_list_rank<r>.json``: the same
  episodes as a list;
* ``agree_rank<r>.json``: a run with a time limit that has passed at once and a validation
  whose value depends on the rank (the ranks must stop at the same step and use rank 0's value);
* ``errors_rank<r>.json``: an evaluation whose model fails on rank 1 only, and a training
  run whose checkpoint path cannot be written (checked by rank 0), a resume that fails on rank 1
  only: every rank must raise;
* ``cli/``: ``mmnet train`` (2 steps) and ``mmnet evaluate`` through :func:`mmnet_plugin.cli.main`,
  their standard output per rank in ``cli_rank<r>.txt``.

The test process computes the same things in one process and compares.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import torch

from mmnet_plugin import MMNet, cli, load_dataset
from mmnet_plugin.distributed import destroy_distributed, init_distributed
from mmnet_plugin.episodes import EpisodeSampler
from mmnet_plugin.evaluation import evaluate
from mmnet_plugin.training import TrainConfig, Trainer

SMALL = dict(dm=32, dr=32)
BATCH = 5


def model(seed: int = 0) -> MMNet:
    """A small MM-Net in float64: in float32 the gradient of this model is ill-conditioned enough
    that one process's own rounding moves it by about 1% (float64 agrees to 1e-13)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MMNet(**SMALL).double()


def train_sampler() -> EpisodeSampler:
    return EpisodeSampler(load_dataset("glyphs", split="train"), ways=(2, 5), shots=(1, 2), queries=2, seed=3)


def eval_sampler() -> EpisodeSampler:
    return EpisodeSampler(load_dataset("glyphs", split="test"), ways=5, shots=1, queries=3, seed=9, episodes=7)


def gradients(sync_bn: bool, context=None) -> dict:
    trainer = Trainer(
        model(), TrainConfig(batch_episodes=BATCH, progress=False, sync_bn=sync_bn), model_config=SMALL, context=context
    )
    loss, acc = trainer.backward(train_sampler().sample_batch(BATCH))
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return {"loss": loss, "accuracy": acc, "grads": grads}


def config(out: Path, steps: int, **kw) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_episodes=BATCH,
        progress=False,
        log_every=1,
        checkpoint=str(out / "ckpt.pt"),
        log_path=str(out / "log.jsonl"),
        **kw,
    )


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    try:
        assert ctx.world_size == 2 and ctx.backend == "gloo", ctx
        torch.save({"sync": gradients(True, ctx), "plain": gradients(False, ctx)}, out / f"grads_rank{ctx.rank}.pt")
        sampler = train_sampler()
        trainer = Trainer(model(), config(out, steps=2, sync_bn=True), model_config=SMALL, context=ctx)
        trainer.fit(sampler)
        (out / f"train_rank{ctx.rank}.json").write_text(
            json.dumps({"fingerprint": sampler.fingerprint, "history": trainer.history, "step": trainer.step})
        )
        net = MMNet.from_checkpoint(out / "ckpt.pt")
        res = evaluate(net, eval_sampler(), batch_episodes=2, context=ctx)
        (out / f"eval_rank{ctx.rank}.json").write_text(json.dumps(res.to_dict()))
        # a plain list of episodes (every rank holds all of them) takes the general path
        res = evaluate(net, list(eval_sampler()), batch_episodes=2, context=ctx)
        (out / f"eval_list_rank{ctx.rank}.json").write_text(json.dumps(res.to_dict()))

        agree = Trainer(
            model(),
            TrainConfig(steps=4, batch_episodes=BATCH, progress=False, val_every=1, time_limit=1e-9),
            model_config=SMALL,
            context=ctx,
        )
        agree.fit(train_sampler(), validate=lambda m: 0.25 + ctx.rank)
        (out / f"agree_rank{ctx.rank}.json").write_text(
            json.dumps({"step": agree.step, "stopped": agree.stopped_early, "history": agree.history})
        )

        errors = {}

        def wrong_on_rank_1(sx, sy, qx):
            n_way = int(sy.max()) + 1
            return torch.zeros(len(qx), n_way + (1 if ctx.rank == 1 else 0))

        try:
            evaluate(wrong_on_rank_1, eval_sampler(), context=ctx)
        except ValueError as exc:
            errors["evaluate"] = str(exc)
        try:  # rank 0 checks the paths it alone writes, for every rank
            Trainer(
                model(),
                TrainConfig(steps=1, batch_episodes=BATCH, progress=False, checkpoint="/proc/no/such/m.pt"),
                context=ctx,
            ).fit(train_sampler())
        except ValueError as exc:
            errors["fit"] = str(exc)
        try:  # only rank 1 cannot resume (another model configuration): both must raise
            Trainer(
                model(), config(out, steps=3), model_config=SMALL if ctx.rank == 0 else {**SMALL, "dm": 99}, context=ctx
            ).fit(train_sampler(), resume=True)
        except Exception as exc:
            errors["resume"] = f"{type(exc).__name__}: {exc}"
        (out / f"errors_rank{ctx.rank}.json").write_text(json.dumps(errors))

        cli_out = out / "cli"
        common = ["--dataset", "glyphs", "--device", "cpu", "--queries", "2", "--no-progress", "--seed", "5"]
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc_train = cli.main(
                [
                    "train",
                    *common,
                    "--ways",
                    "3",
                    "--shots",
                    "1",
                    "--steps",
                    "2",
                    "--batch-episodes",
                    "3",
                    "--dm",
                    "16",
                    "--dr",
                    "16",
                    "--sync-bn",
                    "--checkpoint",
                    str(cli_out / "m.pt"),
                    "--log",
                    str(cli_out / "log.jsonl"),
                ]
            )
            rc_eval = cli.main(
                [
                    "evaluate",
                    *common,
                    "--ways",
                    "3",
                    "--shots",
                    "1",
                    "--episodes",
                    "5",
                    "--batch-episodes",
                    "2",
                    "--checkpoint",
                    str(cli_out / "m.pt"),
                ]
            )
        (out / f"cli_rank{ctx.rank}.txt").write_text(f"{rc_train} {rc_eval}\n{buf.getvalue()}")
    finally:
        destroy_distributed(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
