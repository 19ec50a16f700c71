"""One (method, setting) of the grid: :class:`Job` holds everything that decides its result
(streams, seeds, recipe, hyperparameters, budget) and the keys derived from it; the
seeded samplers of its streams; the record of a job that failed."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, Optional, Tuple

from mmnet_plugin.arguments import format_setting
from mmnet_plugin.episodes import EpisodeSampler

from .fingerprints import ImageDigest, config_key
from .methods import Method, MethodContext
from .options import HARNESS_VERSION
from .store import utc_now

__all__ = ["Job", "stream_sampler", "failed_record"]


class Job:
    """Everything the harness knows about one (method, setting)."""

    def __init__(
        self,
        method_cls: type,
        ways: int,
        shots: int,
        run: Dict[str, Any],
        ctx: MethodContext,
        train_stream: Dict[str, Any],
        test_stream: Dict[str, Any],
        val_stream: Optional[Dict[str, Any]],
        init_seed: int,
        recipe: str,
        options: Dict[str, Any],
    ):
        self.cls = method_cls
        self.ways, self.shots = ways, shots
        self.setting = format_setting(ways, shots)
        self.run = run
        self.ctx = ctx
        self.method: Method = method_cls(ctx, recipe=recipe, options=options)
        self.recipe = recipe
        override = self.method.train_stream_override()
        self.shared_stream = bool(method_cls.shared_stream and override is None)
        if override:
            train_stream = dict(
                train_stream, **{k: ([v, v] if k in ("ways", "shots") else v) for k, v in override.items()}
            )
        self.train_stream = train_stream
        self.test_stream = test_stream
        self.val_stream = val_stream
        self.init_seed = init_seed
        self.hyperparameters = self.method.hyperparameters()
        self.rule_applies = bool(run["min_steps"]) and (recipe != "harness" or run["budget_seconds"] is not None)
        train_config = {
            "harness": HARNESS_VERSION,
            "method": method_cls.name,
            "recipe": recipe,
            "hyperparameters": self.hyperparameters,
            "ctx": {
                "dataset": ctx.dataset,
                "ways": ctx.ways,
                "shots": ctx.shots,
                "in_channels": ctx.in_channels,
                "image_size": ctx.image_size,
                "device_type": ctx.device.type,
            },
            "train_stream": train_stream,
            "init_seed": init_seed,
            "package": run["versions"].get("mmnet-plugin"),
            "budget": {
                "episodes": run["train_episodes"],
                "seconds": run["budget_seconds"],
                "min_steps": run["min_steps"] if self.rule_applies else 0,
            },
            "validation": {k: run["validation"][k] for k in ("every_steps", "points", "episodes")}
            | {"stream": val_stream},
            "data": run["data_digests"],
        }
        self.train_key_nocode = config_key(train_config)
        self.train_key = config_key({"config": self.train_key_nocode, "code": run["code"]["source_sha256"]})
        self.key_nocode = config_key(
            {
                "config_key": run["config_key"],
                "train_key": self.train_key_nocode,
                "setting": [ways, shots],
                "test_stream": test_stream,
            }
        )
        self.key = config_key(
            {
                "run_key": run["run_key"],
                "train_key": self.train_key,
                "setting": [ways, shots],
                "test_stream": test_stream,
            }
        )


def stream_sampler(ds: Any, stream: Dict[str, Any], episodes: Optional[int] = None) -> EpisodeSampler:
    w, k = stream["ways"], stream["shots"]
    ways = w if isinstance(w, int) else (tuple(w) if w[0] != w[1] else w[0])
    shots = k if isinstance(k, int) else (tuple(k) if k[0] != k[1] else k[0])
    return EpisodeSampler(ds, ways=ways, shots=shots, queries=stream["queries"], seed=stream["seed"], episodes=episodes)


class _Digesting:
    """Iterate a sampler's episodes while hashing their decoded images (time kept apart)."""

    def __init__(self, sampler: EpisodeSampler):
        self.sampler = sampler
        self.digest = ImageDigest()
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        for ep in self.sampler:
            t0 = time.perf_counter()
            self.digest.update(ep)
            self.seconds += time.perf_counter() - t0
            yield ep


def failed_record(job_or_cls: Any, setting: Tuple[int, int], error: str) -> Dict[str, Any]:
    cls = job_or_cls.cls if isinstance(job_or_cls, Job) else job_or_cls
    return {
        "status": "failed",
        "method": cls.name,
        "label": cls.label,
        "notes": cls.notes,
        "recipe": getattr(job_or_cls, "recipe", "-"),
        "setting": format_setting(*setting),
        "ways": setting[0],
        "shots": setting[1],
        "error": error,
        "finished_at": utc_now(),
    }
