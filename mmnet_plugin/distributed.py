"""torch.distributed for several processes launched by ``torchrun``: the context and a few collectives.

``torchrun --nproc-per-node N -m mmnet_plugin train ...`` starts N processes with ``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_distributed` reads them, joins the process group (``gloo`` on the CPU, ``nccl`` on
CUDA; ``env://`` initialisation) and returns a :class:`DistributedContext`. Without those
variables, or with ``WORLD_SIZE=1``, it returns a single-process context and leaves
``torch.distributed`` alone, so every helper here is also correct (and free) in one process:
:func:`shard` gives all indices, :func:`gather_objects` returns ``[obj]``, :func:`barrier` does
nothing.

:func:`convert_sync_batchnorm` makes batch norm use the statistics of all ranks' images
(``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` on the CPU, where torch's does not
run); :class:`~mmnet_plugin.training.Trainer` and :func:`~mmnet_plugin.evaluation.evaluate` take
the context and do the rest.

Nothing here prints or keeps state of its own; the only global state is torch.distributed's
process group. Importing the module imports torch only.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, List, Mapping, Optional, Tuple

import torch

__all__ = [
    "DistributedContext",
    "SINGLE_PROCESS",
    "init_distributed",
    "destroy_distributed",
    "distributed_session",
    "exit_process",
    "shard",
    "shard_sizes",
    "gather_objects",
    "broadcast_object",
    "barrier",
    "all_reduce_max",
    "all_reduce_any",
    "all_reduce_sum",
    "convert_sync_batchnorm",
    "GlooSyncBatchNorm",
]

#: The backends :func:`init_distributed` accepts.
BACKENDS = ("gloo", "nccl")

#: Seconds a rank waits for its peers (joining the group, and in every collective) before it
#: gives up with a one-line error: ``--dist-timeout`` of mmnet train/evaluate/bench. torch's
#: own default is 30 minutes of silence.
DEFAULT_TIMEOUT = 60.0

_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def short(text: object, limit: int = 200) -> str:
    """``text`` on one line, cut to ``limit`` characters (for echoing values in errors)."""
    one = " ".join(str(text).split())
    return one if len(one) <= limit else one[: limit - 15] + f"... ({len(one):,} chars)"


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands among the processes of one run.

    Attributes:
        rank: this process's rank, ``0 .. world_size - 1`` (``RANK``).
        world_size: the number of processes (``WORLD_SIZE``).
        local_rank: its rank on this machine (``LOCAL_RANK``); the CUDA device it uses.
        backend: ``"gloo"`` or ``"nccl"`` when a process group is in use, ``None`` in a single
            process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes checkpoints, logs and the progress bar."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process (collectives communicate)."""
        return self.world_size > 1

    def resolve_device(self, device: str) -> str:
        """The device this rank trains on: ``"cuda"`` becomes ``"cuda:<local_rank>"`` when distributed.

        Args:
            device: ``cpu``, ``cuda`` or ``cuda:N``.

        Returns:
            ``device`` itself, except plain ``"cuda"`` under several processes.
        """
        if self.enabled and str(device) == "cuda":
            return f"cuda:{self.local_rank}"
        return str(device)


#: The context of a run in one process.
SINGLE_PROCESS = DistributedContext()


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an integer; launch with torchrun, "
            f"which sets it, or unset it for one process"
        ) from None


def init_distributed(
    device: Optional[str] = None,
    backend: Optional[str] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
) -> DistributedContext:
    """Join the process group torchrun set up, or describe a single process.

    Args:
        device: the training device (``cpu``, ``cuda``, ``cuda:N``); ``None``: ``cuda`` when torch
            sees a GPU, else ``cpu``. It picks the backend: ``nccl`` for CUDA, ``gloo`` for the CPU.
        backend: force ``"gloo"`` or ``"nccl"`` (e.g. gloo for CUDA tensors); ``None``: by device.
        env: the environment to read (default ``os.environ``); for tests.
        timeout: seconds to wait for the peers, in joining and in every collective (default
            :data:`DEFAULT_TIMEOUT`); a missing or dead peer ends the wait with an error.

    Returns:
        A :class:`DistributedContext`. When ``torch.distributed`` is already initialised (by the
        caller), its rank and world size are used and nothing is initialised again. Without
        ``WORLD_SIZE`` or with ``WORLD_SIZE=1``: the single-process context, torch.distributed
        untouched. On CUDA, the current device is set to ``LOCAL_RANK``.

    Raises:
        ValueError: for torchrun variables that are not integers or out of range (``RANK`` outside
            ``0 .. WORLD_SIZE-1``, ``RANK`` or ``MASTER_ADDR``/``MASTER_PORT`` missing), an unknown
            backend, ``nccl`` or a CUDA device asked for where torch sees no GPU (or fewer GPUs than
            ``LOCAL_RANK`` needs), or a torch built without distributed support; a partial
            torchrun environment (``RANK`` without ``WORLD_SIZE``), a ``MASTER_PORT`` that is not
            a port number; and, as one line, a group that cannot be joined (port in use, a peer
            that does not come within ``timeout``).
    """
    env = os.environ if env is None else env
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown distributed backend {backend!r}; use one of {', '.join(BACKENDS)}")
    dist = torch.distributed
    already = dist.is_available() and dist.is_initialized()
    world = _env_int(env, "WORLD_SIZE")
    if not already and world is None and env.get("RANK"):
        given = ", ".join(f"{n}={short(env[n], 40)}" for n in _TORCHRUN_VARS if env.get(n))
        raise ValueError(
            f"a partial torchrun environment ({given}) without WORLD_SIZE; launch with torchrun, "
            "which sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset RANK for one process"
        )
    if not already and world == 1:
        rank = _env_int(env, "RANK")
        if rank not in (None, 0):
            raise ValueError(f"RANK={rank} is outside 0..0 (WORLD_SIZE=1)")
    if not already and (world is None or world == 1):
        return SINGLE_PROCESS
    timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
    if not timeout > 0:
        raise ValueError(f"the distributed timeout must be a positive number of seconds, got {timeout}")
    if world is not None and world < 1:
        raise ValueError(f"WORLD_SIZE={world} must be at least 1")
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed; run in one process (without torchrun)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if already:
        rank, world = dist.get_rank(), dist.get_world_size()
        local = _env_int(env, "LOCAL_RANK")
        local = rank if local is None else local
        used = dist.get_backend()
    else:
        rank = _env_int(env, "RANK")
        if rank is None:
            raise ValueError(f"WORLD_SIZE={world} is set but RANK is not; launch with torchrun, which sets both")
        if not 0 <= rank < world:
            raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
        local = _env_int(env, "LOCAL_RANK")
        local = rank if local is None else local
        if local < 0:
            raise ValueError(f"LOCAL_RANK={local} must be 0 or more")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(f"{name} is not set (env:// initialisation needs it); launch with torchrun")
        port = env["MASTER_PORT"].strip()
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"MASTER_PORT={short(port, 40)!r} is not a port number (1..65535)")
        used = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if used == "nccl" and not torch.cuda.is_available():
        raise ValueError(
            "the nccl backend needs a CUDA GPU and torch sees none; "
            "train on the CPU (--device cpu, gloo) or on a machine with GPUs"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device} was asked for but torch sees no CUDA GPU; use --device cpu")
        index = dev.index if dev.index is not None else local
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"rank {rank} needs CUDA device {index} but torch sees {torch.cuda.device_count()}; "
                "start at most as many processes per node as there are GPUs"
            )
        torch.cuda.set_device(index)
    if not already:
        if used == "nccl" and not dist.is_nccl_available():
            raise ValueError("this torch build has no nccl backend; use gloo")
        if used == "gloo" and not dist.is_gloo_available():
            raise ValueError("this torch build has no gloo backend; use nccl on GPUs")
        _join(used, int(rank), int(world), timeout, env)
    return DistributedContext(rank=int(rank), world_size=int(world), local_rank=int(local), backend=str(used))


def _join(backend: str, rank: int, world: int, timeout: float, env: Mapping[str, str]) -> None:
    """``init_process_group`` with a timeout; its failures become one ``ValueError`` line."""
    from datetime import timedelta

    where = f"{env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')}"
    try:
        torch.distributed.init_process_group(
            backend=backend, init_method="env://", rank=rank, world_size=world, timeout=timedelta(seconds=timeout)
        )
    except (RuntimeError, OSError) as exc:  # DistNetworkError, DistStoreError, timeouts
        text = str(exc)
        if "EADDRINUSE" in text or "address already in use" in text.lower():
            reason = f"port {env.get('MASTER_PORT')} is in use by another process; pick a free MASTER_PORT"
        elif "timeout" in text.lower() or "timed out" in text.lower():
            reason = (
                f"the other ranks did not all join within {timeout:g} s (--dist-timeout); "
                "start all WORLD_SIZE processes, e.g. with torchrun"
            )
        else:
            reason = short(text.strip().splitlines()[0] if text.strip() else type(exc).__name__)
        raise ValueError(f"rank {rank} of {world} could not join the process group at {where}: {reason}") from None


def describe_dist_failure(exc: BaseException) -> Optional[str]:
    """One line for an error raised by a collective when a peer died or timed out, else ``None``."""
    dist_error = getattr(torch.distributed, "DistError", None)
    text = str(exc)
    lowered = text.lower()
    if (dist_error is not None and isinstance(exc, dist_error)) or (
        isinstance(exc, RuntimeError)
        and any(k in lowered for k in ("gloo", "nccl", "connection closed by peer", "connection reset", "timed out"))
    ):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return (
            f"another rank died or stopped answering (torch.distributed: {short(first, 160)}); "
            "records already written are kept"
        )
    return None


def destroy_distributed(ctx: DistributedContext) -> None:
    """Leave the process group (a no-op in one process or when none is initialised)."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def distributed_session(
    device: Any, timeout: Optional[float] = None
) -> Iterator[Tuple[DistributedContext, torch.device]]:
    """Join torchrun's process group for a block (or stay one process), and leave it after.

    Args:
        device: the training device asked for (``cpu``, ``cuda``, ``cuda:N``).
        timeout: seconds to wait for peers (default :data:`DEFAULT_TIMEOUT`).

    Yields:
        ``(context, device)``: the :func:`init_distributed` context and this rank's device
        (:meth:`DistributedContext.resolve_device`). The group is destroyed at the end only when
        this call initialised it.

    Raises:
        ValueError: as :func:`init_distributed`, on entering.
    """
    before = torch.distributed.is_available() and torch.distributed.is_initialized()
    ctx = init_distributed(str(device), timeout=timeout)
    ok = False
    try:
        yield ctx, torch.device(ctx.resolve_device(str(device)))
        ok = True
    finally:
        if ctx.enabled and not before:
            if ok:
                # no rank tears the group down while a peer is still in a collective with it
                try:
                    barrier(ctx)
                except RuntimeError:
                    pass
            destroy_distributed(ctx)


def exit_process(status: int) -> None:
    """End the process with ``status``; under torchrun, without the interpreter's teardown.

    A torchrun rank whose work is done (results written, process group destroyed) flushes its
    output and leaves with ``os._exit``: C++ objects of torch's thread pools and gloo
    transports are then not destroyed at interpreter exit, where a still-joinable
    ``std::thread`` aborts the process (``terminate called without an active exception``,
    SIGABRT) and torchrun reports a finished run as failed. In one process this is
    ``sys.exit(status)``.
    """
    import sys

    world = os.environ.get("WORLD_SIZE", "").strip()
    if world.isdigit() and int(world) > 1:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken stream: nothing left to save
                pass
        os._exit(int(status) if isinstance(status, int) else 1)
    sys.exit(status)


def shard(n: int, ctx: DistributedContext) -> range:
    """The indices of ``n`` items that this rank handles: ``range(rank, n, world_size)``.

    Strided, so every rank's share differs by at most one item and the shares of all ranks,
    put together, are ``range(n)`` exactly once.

    Args:
        n: the number of items (0 or more).
        ctx: the context.

    Returns:
        A range (empty when ``n <= rank``).

    Raises:
        ValueError: for a negative ``n``.
    """
    if n < 0:
        raise ValueError(f"cannot shard a negative number of items ({n})")
    return range(ctx.rank, n, ctx.world_size)


def shard_sizes(n: int, ctx: DistributedContext) -> List[int]:
    """How many of ``n`` items each rank handles under :func:`shard` (index = rank)."""
    return [len(range(r, n, ctx.world_size)) for r in range(ctx.world_size)]


def _collective_device(ctx: DistributedContext) -> torch.device:
    if ctx.backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_objects(obj: Any, ctx: DistributedContext) -> List[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank (``all_gather_object``).

    Returns:
        ``[obj_rank0, obj_rank1, ...]``; ``[obj]`` in one process.
    """
    if not ctx.enabled:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistributedContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the others' ``obj`` is ignored); ``obj`` in one process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here (nothing in one process)."""
    if ctx.enabled:
        if ctx.backend == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()


def _all_reduce(value: float, ctx: DistributedContext, op: Any) -> float:
    if not ctx.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(ctx))
    torch.distributed.all_reduce(t, op=op)
    return float(t.item())


def all_reduce_sum(value: float, ctx: DistributedContext) -> float:
    """The sum of ``value`` over ranks (float64), the same on every rank."""
    return _all_reduce(value, ctx, torch.distributed.ReduceOp.SUM if ctx.enabled else None)


def all_reduce_max(value: float, ctx: DistributedContext) -> float:
    """The largest ``value`` over ranks (float64), the same on every rank."""
    return _all_reduce(value, ctx, torch.distributed.ReduceOp.MAX if ctx.enabled else None)


def all_reduce_any(flag: bool, ctx: DistributedContext) -> bool:
    """Whether any rank's ``flag`` is true, the same answer on every rank (for a rank-agreed stop)."""
    return all_reduce_max(1.0 if flag else 0.0, ctx) > 0.5


class _SyncBatchNormFunction(torch.autograd.Function):
    """Normalise with given (global) statistics; the backward pass sums its reductions over ranks.

    Forward: ``(x - mean) / sqrt(var + eps) * weight + bias`` with torch's fused batch-norm kernel.
    Backward: the batch-norm gradient over all ranks' inputs, ``weight * invstd * (g - mean(g) -
    xhat * mean(g * xhat))`` with the two means taken over every rank's elements (one all-reduce);
    the weight and bias gradients are this rank's sums, as in ``torch.nn.SyncBatchNorm`` (DDP
    averages them over ranks like every other gradient).
    """

    @staticmethod
    def forward(
        ctx: Any,
        input: torch.Tensor,
        weight: Optional[torch.Tensor],
        bias: Optional[torch.Tensor],
        mean: torch.Tensor,
        var: torch.Tensor,
        eps: float,
        count: float,
        group: Any,
    ) -> torch.Tensor:  # type: ignore[override]
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(input, weight, mean, invstd)
        ctx.count, ctx.group, ctx.has_bias = count, group, bias is not None
        return torch.nn.functional.batch_norm(input, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:  # type: ignore[override]
        input, weight, mean, invstd = ctx.saved_tensors
        grad = (
            grad.contiguous(memory_format=torch.channels_last)
            if input.is_contiguous(memory_format=torch.channels_last) and input.dim() == 4
            else grad.contiguous()
        )
        w = weight if weight is not None else torch.ones_like(mean)
        # this rank's sum(g * xhat) and sum(g) per channel, by torch's fused kernel
        _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
            grad, input, w, None, None, mean, invstd, True, 0.0, [False, True, True]
        )
        sums = torch.cat([sum_g, sum_gx]).double()
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        c = mean.numel()
        mean_g, mean_gx = (sums[:c] / ctx.count).to(mean.dtype), (sums[c:] / ctx.count).to(mean.dtype)
        shape = [1, c] + [1] * (input.dim() - 2)
        # grad_input = k * g + a * x + b, per channel, the affine form of the formula above
        k = w * invstd
        a = -k * invstd * mean_gx
        b = -k * mean_g - a * mean
        grad_input = torch.addcmul(b.view(shape), input, a.view(shape))
        grad_input.addcmul_(grad, k.view(shape))
        grad_input = grad_input.to(input.dtype)
        grad_weight = sum_gx if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = sum_g if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


class GlooSyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of all ranks' inputs together, on any device.

    ``torch.nn.SyncBatchNorm`` runs only on GPUs; this layer does the same on the CPU (gloo):
    in training mode, under an initialised process group of more than one rank, the mean and
    the (biased) variance used to normalise are those of the union of every rank's batch,
    gathered with one all-reduce (each rank's count, mean and variance), and the backward pass
    takes its two per-channel means over all ranks too (one more all-reduce), so the gradients
    are those of one process normalising the whole batch. Normalisation and reductions use
    torch's fused batch-norm kernels. The running statistics are
    updated with them as :class:`torch.nn.BatchNorm2d` would (unbiased variance). In evaluation
    mode, or without a process group, it is plain batch norm. Parameters and buffers are those
    of :class:`torch.nn.BatchNorm2d`, so its state dict loads into one.

    Args:
        num_features: channels C of the ``[N, C, ...]`` input.
        eps, momentum, affine, track_running_stats: as :class:`torch.nn.BatchNorm2d`.
        process_group: the group to reduce over (default: the whole world).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [N, C, ...], got {input.dim()}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: D401 - see class docstring
        dist = torch.distributed
        group = self.process_group
        sync = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
        if not sync:
            return super().forward(input)
        group = group if group is not None else dist.group.WORLD
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        n_local = input.numel() // max(c, 1)
        with torch.no_grad():
            # one all-reduce: every rank's count, sum and sum of squares (from its own mean and
            # variance, in float64), then the mean and biased variance of all ranks' elements
            var_r, mean_r = torch.var_mean(input, dims, correction=0)
            mean_r, var_r = mean_r.double(), var_r.double()
            stats = torch.cat(
                [mean_r * n_local, (var_r + mean_r * mean_r) * n_local, mean_r.new_full((1,), float(n_local))]
            )
            dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=group)
            n = float(stats[-1])
            mean = stats[:c] / n
            var = (stats[c : 2 * c] / n - mean * mean).clamp_min(0)
            if self.track_running_stats and self.running_mean is not None:
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var * (n / max(n - 1.0, 1.0))
                self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        # the statistics in the parameters' dtype: under bf16 autocast the input is bf16 and the
        # parameters float32, a mix torch's CPU batch-norm kernels take only with float32 statistics
        dtype = self.weight.dtype if self.weight is not None else input.dtype
        return _SyncBatchNormFunction.apply(
            input, self.weight, self.bias, mean.to(dtype), var.to(dtype), self.eps, n, group
        )


def convert_sync_batchnorm(
    module: torch.nn.Module, ctx: DistributedContext, device: Optional[str] = None
) -> torch.nn.Module:
    """Make every batch-norm layer of ``module`` normalise with the statistics of all ranks.

    On CUDA with nccl: :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`. Elsewhere (the
    CPU with gloo, where torch's SyncBatchNorm does not run): :class:`GlooSyncBatchNorm`, on a
    process group of its own so its collectives never interleave with DDP's gradient
    all-reduces. Weights and buffers are kept; the state dict keys do not change. In one
    process nothing is converted (there is nothing to synchronise).

    Args:
        module: the model; converted in place where possible.
        ctx: the context (collective: every rank must call this, in the same order).
        device: the training device (``None``: by the backend).

    Returns:
        The converted module (``module`` itself unless it is a batch-norm layer).
    """
    if not ctx.enabled:
        return module
    on_cuda = (device is not None and torch.device(device).type == "cuda") or (device is None and ctx.backend == "nccl")
    if on_cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    group = torch.distributed.new_group(backend="gloo")
    return _convert_gloo(module, group)


def _convert_gloo(module: torch.nn.Module, group: Any) -> torch.nn.Module:
    out = module
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group=group,
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
    for name, child in module.named_children():
        out.add_module(name, _convert_gloo(child, group))
    return out
