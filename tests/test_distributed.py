"""torch.distributed helpers: the single-process context, torchrun's environment, sharding."""

import pytest
import torch

from mmnet_plugin import distributed as D


def test_no_torchrun_env_is_one_process_and_leaves_torch_distributed_alone():
    ctx = D.init_distributed("cpu", env={})
    assert ctx == D.SINGLE_PROCESS and ctx.is_main and not ctx.enabled and ctx.backend is None
    assert not torch.distributed.is_initialized()
    ctx = D.init_distributed("cpu", env={"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"})
    assert ctx == D.SINGLE_PROCESS and not torch.distributed.is_initialized()


def test_single_process_collectives_are_identities():
    ctx = D.SINGLE_PROCESS
    assert list(D.shard(5, ctx)) == [0, 1, 2, 3, 4]
    assert D.gather_objects({"a": 1}, ctx) == [{"a": 1}]
    assert D.broadcast_object([1, 2], ctx) == [1, 2]
    D.barrier(ctx)
    assert D.all_reduce_max(2.5, ctx) == 2.5 and D.all_reduce_sum(3, ctx) == 3.0
    assert D.all_reduce_any(False, ctx) is False and D.all_reduce_any(True, ctx) is True
    assert ctx.resolve_device("cuda") == "cuda"


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (16, 2), (17, 3), (5, 8)])
def test_shards_cover_every_index_once(n, world):
    ctxs = [D.DistributedContext(rank=r, world_size=world, local_rank=r, backend="gloo") for r in range(world)]
    shares = [list(D.shard(n, c)) for c in ctxs]
    assert sorted(i for s in shares for i in s) == list(range(n))
    assert [len(s) for s in shares] == D.shard_sizes(n, ctxs[0])
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert ctxs[0].is_main and not ctxs[1].is_main and ctxs[1].enabled
    assert ctxs[1].resolve_device("cuda") == "cuda:1" and ctxs[1].resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="negative"):
        D.shard(-1, ctxs[0])


@pytest.mark.parametrize(
    "env,match",
    [
        ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
        ({"WORLD_SIZE": "2"}, "RANK is not"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, r"RANK=2 is outside 0\.\.1"),
        ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "0", "RANK": "0"}, "must be at least 1"),
    ],
)
def test_bad_torchrun_env_is_refused_before_joining(env, match):
    with pytest.raises(ValueError, match=match):
        D.init_distributed("cpu", env=env)
    assert not torch.distributed.is_initialized()


def test_nccl_or_cuda_without_gpu_and_unknown_backend_are_refused():
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    with pytest.raises(ValueError, match="unknown distributed backend 'mpi'"):
        D.init_distributed("cpu", backend="mpi", env=env)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="nccl backend needs a CUDA GPU"):
        D.init_distributed("cpu", backend="nccl", env=env)
    with pytest.raises(ValueError, match="nccl backend needs a CUDA GPU"):
        D.init_distributed("cuda", env=env)
    assert not torch.distributed.is_initialized()


def test_gloo_sync_batchnorm_is_plain_batch_norm_in_one_process_and_keeps_the_state_dict():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    sbn = D.GlooSyncBatchNorm(3)
    sbn.load_state_dict(bn.state_dict())
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(bn(x), sbn(x))
    assert torch.equal(bn.running_var, sbn.running_var)
    assert bn.state_dict().keys() == sbn.state_dict().keys()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3))
    assert D.convert_sync_batchnorm(net, D.SINGLE_PROCESS) is net and isinstance(net[1], torch.nn.BatchNorm2d)


def test_trainer_refuses_fewer_episodes_than_ranks_before_any_collective():
    from mmnet_plugin import MMNet
    from mmnet_plugin.training import TrainConfig, Trainer

    ctx = D.DistributedContext(rank=0, world_size=4, local_rank=0, backend="gloo")
    with pytest.raises(ValueError, match="batch_episodes 3 is smaller than the 4 processes"):
        Trainer(MMNet(dm=16, dr=16), TrainConfig(batch_episodes=3), context=ctx)
    assert not torch.distributed.is_initialized()


def test_sync_bn_changes_nothing_in_one_process():
    from mmnet_plugin import MMNet
    from mmnet_plugin.training import TrainConfig, Trainer

    trainer = Trainer(MMNet(dm=16, dr=16), TrainConfig(batch_episodes=2, sync_bn=True, progress=False))
    kinds = {type(m) for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert kinds == {torch.nn.BatchNorm2d}
    assert trainer.step_module.model is trainer.model


# ---------------------------------------------------------------------------------------------------
# Two gloo ranks on the CPU: tests/dist_worker.py under torchrun (one launch for the tests below),
# compared with the same computations in this process.

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Run the worker on 2 gloo ranks (1 thread each); its output folder."""
    out = tmp_path_factory.mktemp("two-ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    # the ranks import the mmnet_plugin this process tests (a checkout or an installed wheel)
    import mmnet_plugin

    package_parent = str(Path(mmnet_plugin.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + [p for p in [env.get("PYTHONPATH")] if p])
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(HERE / "dist_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return out


@pytest.fixture(scope="module")
def worker():
    sys.path.insert(0, str(HERE))
    try:
        import dist_worker
    finally:
        sys.path.remove(str(HERE))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks
    yield dist_worker
    torch.set_num_threads(threads)


def _read(out, name):
    return [json.loads((out / name.format(r=r)).read_text()) for r in (0, 1)]


def test_two_ranks_evaluate_exactly_as_one_process(ranks, worker):
    from mmnet_plugin import MMNet

    one = worker.evaluate(MMNet.from_checkpoint(ranks / "ckpt.pt"), worker.eval_sampler(), batch_episodes=2)
    for res in _read(ranks, "eval_rank{r}.json") + _read(ranks, "eval_list_rank{r}.json"):
        assert res["per_episode"] == one.per_episode and len(one.per_episode) == 7
        assert res["accuracy"] == one.accuracy and res["ci95"] == one.ci95
        assert res["fingerprint"] == one.fingerprint and res["episodes"] == 7
        assert res["queries_per_class"] == one.queries_per_class == 3
    assert len(set(one.per_episode)) > 1  # the episodes differ, so the order is tested


def test_two_ranks_gradient_with_sync_bn_is_one_process_gradient_of_the_mean(ranks, worker):
    ref = worker.gradients(False)
    got = [torch.load(ranks / f"grads_rank{r}.pt") for r in (0, 1)]
    for kind in ("sync", "plain"):
        assert got[0][kind]["grads"].keys() == got[1][kind]["grads"].keys() == ref["grads"].keys()
        for name in ref["grads"]:  # DDP: every rank holds the same averaged gradient
            assert torch.equal(got[0][kind]["grads"][name], got[1][kind]["grads"][name]), name
    # 5 episodes on 2 ranks (3 + 2): weighted, so equal to the whole batch's mean (float64 model)
    sync = got[0]["sync"]
    assert sync["loss"] == pytest.approx(ref["loss"], rel=1e-6)
    assert sync["accuracy"] == pytest.approx(ref["accuracy"], rel=1e-6)
    for name, g in ref["grads"].items():
        torch.testing.assert_close(sync["grads"][name], g, rtol=1e-9, atol=1e-12, msg=name)
    # per-rank batch norm statistics (the default) give another gradient, and another loss
    plain = got[0]["plain"]
    rel = max(
        float((plain["grads"][n] - g).abs().max() / g.abs().max()) for n, g in ref["grads"].items() if g.abs().max() > 0
    )
    assert rel > 1e-3 and plain["loss"] != pytest.approx(ref["loss"], rel=1e-6)


def test_two_rank_checkpoint_resumes_in_one_process_on_the_same_stream(ranks, worker, tmp_path):
    from mmnet_plugin.training import Trainer, load_checkpoint

    # a one-process run of 4 steps
    full_sampler = worker.train_sampler()
    full = Trainer(worker.model(), worker.config(tmp_path / "full", 4), model_config=worker.SMALL)
    full.fit(full_sampler)
    full_losses = [r["loss"] for r in full.history if "loss" in r]
    # the 2-rank run of 2 steps: same losses, same stream, one log written by rank 0 alone
    trained = _read(ranks, "train_rank{r}.json")

    def strip(history):  # the timings are each rank's own
        return [{k: v for k, v in r.items() if k not in ("episodes_per_s", "seconds")} for r in history]

    assert strip(trained[0]["history"]) == strip(trained[1]["history"]) and trained[0]["step"] == 2
    two_losses = [r["loss"] for r in trained[0]["history"] if "loss" in r]
    assert two_losses == pytest.approx(full_losses[:2], rel=1e-6)
    two_steps = worker.train_sampler()
    two_steps.sample_batch(2 * worker.BATCH)
    assert trained[0]["fingerprint"] == trained[1]["fingerprint"] == two_steps.fingerprint
    log = [json.loads(line) for line in (ranks / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert log[0]["start"] and log[0]["world_size"] == 2 and log[0]["sync_bn"] is True
    state = load_checkpoint(ranks / "ckpt.pt")
    assert state["step"] == 2 and state["model"].keys() == worker.model().state_dict().keys()
    # resumed in one process up to 4 steps: the same episodes as the uninterrupted run, and the
    # same weights to float rounding (float64 model)
    (tmp_path / "resumed").mkdir()
    shutil.copy(ranks / "ckpt.pt", tmp_path / "resumed" / "ckpt.pt")
    resumed_sampler = worker.train_sampler()
    resumed = Trainer(worker.model(), worker.config(tmp_path / "resumed", 4), model_config=worker.SMALL)
    resumed.fit(resumed_sampler, resume=True)
    assert resumed.step == 4 and resumed_sampler.fingerprint == full_sampler.fingerprint
    assert [r["loss"] for r in resumed.history if "loss" in r] == pytest.approx(full_losses[2:], rel=1e-6)
    want, got = full.model.state_dict(), resumed.model.state_dict()
    for name in want:
        if name.endswith("_extra_state"):  # the model's configuration (strings) beside the generator's state
            assert got[name].pop("config") == want[name].pop("config"), name
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-12, msg=name)


def test_ranks_stop_at_the_same_step_and_use_rank_0s_validation(ranks):
    agreed = _read(ranks, "agree_rank{r}.json")
    for run in agreed:  # the time limit (1e-9 s) has passed after step 1 on both ranks
        assert run["step"] == 1 and run["stopped"] is True
        vals = [r["val_accuracy"] for r in run["history"] if "val_accuracy" in r]
        assert vals == [0.25]  # rank 1's own validation said 1.25


def test_mmnet_train_and_evaluate_under_torchrun(ranks, worker, capsys):
    from mmnet_plugin import cli

    rank0, rank1 = [(ranks / f"cli_rank{r}.txt").read_text().splitlines() for r in (0, 1)]
    assert rank0[0] == rank1[0] == "0 0"
    assert rank1[1:] == []  # rank 0 alone prints
    train_line, eval_line = rank0[1:]
    assert train_line.startswith("trained 2 steps x 3 episodes") and "2 processes (gloo, sync-bn)" in train_line
    common = ["--dataset", "glyphs", "--device", "cpu", "--queries", "2", "--no-progress", "--seed", "5"]
    assert (
        cli.main(
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
                str(ranks / "cli" / "m.pt"),
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == eval_line


def _distributed_step_script():
    import importlib.util

    path = HERE.parent / "benchmarks" / "distributed_step.py"
    spec = importlib.util.spec_from_file_location("distributed_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_distributed_step_script_parses_modes_and_refuses_bad_ones(capsys):
    script = _distributed_step_script()
    modes = script._parse_modes("single2, ranks2,ranks3-syncbn")
    assert [(m["kind"], m["n"], m["sync_bn"]) for m in modes] == [
        ("single", 2, False),
        ("ranks", 2, False),
        ("ranks", 3, True),
    ]
    for bad, match in (("single2-syncbn", "needs several ranks"), ("ranks0", "is not single"), ("", "no modes")):
        with pytest.raises(ValueError, match=match):
            script._parse_modes(bad)
    assert script.main(["--modes", "ranks4", "--batch-episodes", "3"]) == 2
    assert "fewer than 4 ranks" in capsys.readouterr().err


def test_an_error_on_one_rank_is_raised_on_every_rank(ranks):
    rank0, rank1 = _read(ranks, "errors_rank{r}.json")
    assert "a callable model must return class scores" in rank1["evaluate"]
    assert rank0["evaluate"].startswith("evaluation failed on rank 1: ValueError: the model returned scores")
    assert rank0["fit"] == rank1["fit"] and "checkpoint /proc/no/such/m.pt cannot be" in rank0["fit"]
    assert rank1["resume"].startswith("CheckpointError: the checkpoint's model configuration")
    assert rank0["resume"].startswith("CheckpointError: rank 1 could not resume: the checkpoint's model")


def test_drawing_without_reading_images_keeps_the_stream_and_fingerprint():
    from mmnet_plugin import load_dataset
    from mmnet_plugin.episodes import EpisodeSampler

    data = load_dataset("glyphs", split="val")
    loaded = []

    class Counting:
        targets = data.targets

        def load(self, idx):
            loaded.append(len(idx))
            return data.load(idx)

    def sampler(source, episodes=None):
        return EpisodeSampler(source, ways=(2, 5), shots=(1, 3), queries=2, seed=7, episodes=episodes)

    full, part = sampler(data), sampler(Counting())
    every = full.sample_batch(5)
    mine = part.sample_batch(5, keep=[1, 3])
    assert len(loaded) == 2 and [e.fingerprint_bytes() for e in mine] == [
        every[1].fingerprint_bytes(),
        every[3].fingerprint_bytes(),
    ]
    assert torch.equal(mine[0].query_x, every[1].query_x)
    assert part.state_dict() == full.state_dict()  # same stream position and fingerprint
    assert part.sample().fingerprint_bytes() == full.sample().fingerprint_bytes()
    # a finite pass, rank 1 of 3
    a, b = sampler(data, episodes=7), sampler(Counting(), episodes=7)
    plain = list(a)
    loaded.clear()
    shard = list(b.iter_shard(1, 3))
    assert len(shard) == 7 and [i for i, (ep, _) in enumerate(shard) if ep is not None] == [1, 4]
    assert len(loaded) == 2 and [fb for _, fb in shard] == [e.fingerprint_bytes() for e in plain]
    assert b.fingerprint == a.fingerprint and b.drawn == a.drawn == 7
    with pytest.raises(ValueError, match="rank 3 is outside 0..2"):
        next(b.iter_shard(3, 3))


def test_distributed_step_script_times_one_process_and_two_ranks(tmp_path):
    out = tmp_path / "step.json"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE.parent / "benchmarks" / "distributed_step.py"),
            "--modes",
            "single1,ranks2-syncbn",
            "--ways",
            "3",
            "--queries",
            "1",
            "--batch-episodes",
            "3",
            "--steps",
            "2",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, ranks = json.loads(out.read_text())["records"]
    assert (single["processes"], single["threads_per_process"]) == (1, 1)
    assert (ranks["processes"], ranks["sync_bn"], ranks["backend"]) == (2, True, "gloo")
    assert len(single["seconds_per_step"]) == len(ranks["seconds_per_step"]) == 2
    # the same model and episodes: with sync-bn the 2 ranks compute one process's first loss (to
    # float32 rounding; after an Adam step, which moves tiny gradients by a whole lr, they drift apart)
    assert ranks["losses"][0] == pytest.approx(single["losses"][0], rel=1e-4)
    assert "s/step" in proc.stdout and "device record" in proc.stdout
