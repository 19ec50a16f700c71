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


@pytest.mark.parametrize("env,match", [
    ({"WORLD_SIZE": "two", "RANK": "0"}, "WORLD_SIZE='two' is not an integer"),
    ({"WORLD_SIZE": "2"}, "RANK is not"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "x", "MASTER_PORT": "1"}, r"RANK=2 is outside 0\.\.1"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR is not set"),
    ({"WORLD_SIZE": "0", "RANK": "0"}, "must be at least 1"),
])
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
