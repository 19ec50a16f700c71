"""The analysis' core: data, the test episodes every model shares, training (or reusing) and
testing each model, and the results file. The parts and the report are mixins
(:mod:`.parts`, :mod:`.report`)."""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mmnet_plugin.arguments import resolve_device
from mmnet_plugin.data import load_dataset
from mmnet_plugin.episodes import Episode, EpisodeSampler, IntOrRange
from mmnet_plugin.evaluation import EvaluationResult, evaluate
from mmnet_plugin.models import MMNet
from mmnet_plugin.training import TrainConfig, Trainer

from ..files import safe_torch_load  # torch.load with weights_only=True
from .helpers import FORMAT, Setting, TrainedModel, atomic_write_bytes, config_key, seed_for, setting_name, write_json
from .parts import Parts
from .report import Report

__all__ = ["Analysis"]


class Analysis(Parts, Report):
    """Trains, tests and caches the models of every part; writes results and figures.

    Args:
        args: the parsed command line (see :func:`build_parser`).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(args.device)
        self.train_ds = load_dataset(args.dataset, split=args.train_split, data_root=args.data_root)
        if args.eval_split == args.train_split or (args.train_split == "trainval" and args.eval_split == "val"):
            raise ValueError(
                f"--eval-split {args.eval_split} holds classes of --train-split {args.train_split}; evaluate on "
                "classes never trained on (val for choices, test for reporting)"
            )
        self.test_ds = load_dataset(args.dataset, split=args.eval_split, data_root=args.data_root)
        x = self.test_ds.load(np.asarray([0]))
        self.in_channels, self.image_size = int(x.shape[1]), int(x.shape[2])
        self.batch_episodes = args.batch_episodes or (4 if args.dataset == "miniimagenet" else 16)
        # Omniglot 5-way saturates near 100%, where every ablation's interval overlaps: compare at 20-way.
        self.ablation_setting: Setting = tuple(
            args.ablation_setting or ((20, 1) if args.dataset == "omniglot" else (5, 5))
        )
        self._test_sets: Dict[Setting, Tuple[List[Episode], str]] = {}
        self._models: Dict[str, TrainedModel] = {}
        self.results: Dict[str, Any] = {
            "format": FORMAT,
            "config": self.describe(),
            "test_fingerprints": {},
            "parts": {},
        }
        prev = self.out / "results.json"
        if prev.exists():
            try:
                old = json.loads(prev.read_text())
                if old.get("config") == self.results["config"]:
                    self.results["parts"].update(old.get("parts", {}))
                    self.results["test_fingerprints"].update(old.get("test_fingerprints", {}))
            except (ValueError, OSError):
                pass

    # ------------------------------------------------------------------ description
    def describe(self) -> Dict[str, Any]:
        a = self.args
        return {
            "dataset": a.dataset,
            "train_split": a.train_split,
            "eval_split": a.eval_split,
            "seed": a.seed,
            "steps": a.steps,
            "batch_episodes": self.batch_episodes,
            "test_episodes": a.test_episodes,
            "ablation_setting": setting_name(*self.ablation_setting),
            "queries": a.queries,
            "dm": a.dm,
            "dr": a.dr,
            "dr_values": list(a.dr_values),
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "device_type": self.device.type,
        }

    def budget(self) -> str:
        a = self.args
        return (
            f"{a.steps} steps x {self.batch_episodes} episodes = {a.steps * self.batch_episodes} training "
            f"episodes per model; {a.test_episodes} {a.eval_split}-split episodes per setting, "
            f"{a.queries} queries/class"
        )

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    # ------------------------------------------------------------------ episodes
    def test_set(self, ways: int, shots: int) -> Tuple[List[Episode], str]:
        """The test episodes of a setting (drawn once; the same for every model)."""
        key = (ways, shots)
        if key not in self._test_sets:
            sampler = EpisodeSampler(
                self.test_ds,
                ways,
                shots,
                self.args.queries,
                seed=seed_for(self.args.seed, "test", ways, shots),
                episodes=self.args.test_episodes,
            )
            episodes = list(sampler)
            self._test_sets[key] = (episodes, sampler.fingerprint)
            name = setting_name(ways, shots)
            self.results["test_fingerprints"][name] = sampler.fingerprint
            self.log(f"test episodes {name}: {len(episodes)}, fingerprint {sampler.fingerprint[:16]}")
        return self._test_sets[key]

    def _train_sampler(self, ways: IntOrRange, shots: IntOrRange) -> EpisodeSampler:
        return EpisodeSampler(
            self.train_ds, ways, shots, self.args.queries, seed=seed_for(self.args.seed, "train"), episodes=None
        )

    # ------------------------------------------------------------------ models
    def mmnet_options(self, **overrides: Any) -> Dict[str, Any]:
        opts: Dict[str, Any] = {
            "in_channels": self.in_channels,
            "image_size": self.image_size,
            "dm": self.args.dm,
            "dr": self.args.dr,
        }
        opts.update(overrides)
        return opts

    def train(
        self,
        name: str,
        kind: str,
        ways: IntOrRange,
        shots: IntOrRange,
        tests: Sequence[Setting],
        options: Optional[Dict[str, Any]] = None,
    ) -> TrainedModel:
        """Train (or load) one model and test it on ``tests``.

        Args:
            name: display name.
            kind: ``mmnet`` or ``matchingnet``.
            ways, shots: the training episodes' C and k (ranges for the mixed strategies).
            tests: 5-way k-shot (etc.) settings to test on.
            options: MMNet constructor arguments (``mmnet`` only).
        """
        a = self.args
        options = dict(options or {})
        config = {
            "kind": kind,
            "ways": ways,
            "shots": shots,
            "options": options,
            "steps": a.steps,
            "batch_episodes": self.batch_episodes,
            "queries": a.queries,
            "seed": a.seed,
            "dataset": a.dataset,
            "train_split": a.train_split,
            "device_type": self.device.type,
        }
        key = config_key(config)
        if key in self._models:
            tm = self._models[key]
        else:
            tm = self._train_or_load(key, name, kind, ways, shots, options, config)
            self._models[key] = tm
        changed = False
        for w, k in tests:
            setting = setting_name(w, k)
            episodes, fp = self.test_set(w, k)
            res = tm.record["tests"].get(setting)
            if res is None or res.get("fingerprint") != fp:
                r: EvaluationResult = evaluate(tm.predictor, episodes, device=self.device, batch_episodes=25)
                tm.record["tests"][setting] = {
                    "accuracy": r.accuracy,
                    "ci95": r.ci95,
                    "episodes": r.episodes,
                    "fingerprint": r.fingerprint,
                }
                changed = True
                self.log(f"  {name} on {setting}: {r.summary()}")
        if changed:
            write_json(self.out / "models" / f"{key}.json", tm.record)
        return tm

    def _build(self, kind: str, options: Dict[str, Any]) -> Tuple[torch.nn.Module, Any]:
        """Model (and, for Matching Networks, the harness method) with seeded weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(self.args.seed, "init"))
            if kind == "mmnet":
                return MMNet(**options).to(self.device), None
            if kind == "matchingnet":
                from ..methods.base import MethodContext
                from ..methods.matchingnet import MatchingNetMethod

                MatchingNetMethod.check_available()
                ctx = MethodContext(
                    self.args.dataset,
                    5,
                    5,
                    self.in_channels,
                    self.image_size,
                    self.device,
                    self.args.steps * self.batch_episodes,
                )
                method = MatchingNetMethod(ctx)
                method.build()
                return method.model, method
        raise ValueError(f"unknown model kind {kind!r}")

    def _train_or_load(
        self,
        key: str,
        name: str,
        kind: str,
        ways: IntOrRange,
        shots: IntOrRange,
        options: Dict[str, Any],
        config: Dict[str, Any],
    ) -> TrainedModel:
        a = self.args
        rec_path = self.out / "models" / f"{key}.json"
        pt_path = self.out / "models" / f"{key}.pt"
        model, method = self._build(kind, options)
        record: Optional[Dict[str, Any]] = None
        if a.resume and rec_path.exists() and pt_path.exists():
            try:
                old = json.loads(rec_path.read_text())
                if old.get("config") == json.loads(json.dumps(config, default=str)):
                    model.load_state_dict(
                        safe_torch_load(pt_path, map_location=self.device)
                    )  # weights_only=True; ValueError naming the file
                    record = old
                    self.log(f"{name}: reusing {rec_path.name} (trained before)")
            except (ValueError, OSError, RuntimeError) as exc:
                self.log(f"{name}: cannot reuse {rec_path.name} ({exc}); training again")
                record = None
        if record is None:
            self.log(
                f"{name}: training {kind} on {setting_name(ways, shots)} ({a.steps} steps x {self.batch_episodes})"
            )
            sampler = self._train_sampler(ways, shots)
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed_for(a.seed, "train-rng"))
                history = self._fit(kind, model, method, sampler)
            record = {
                "name": name,
                "config": json.loads(json.dumps(config, default=str)),
                "history": history,
                "train_fingerprint": sampler.fingerprint,
                "train_seconds": time.perf_counter() - t0,
                "tests": {},
            }
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            atomic_write_bytes(pt_path, buf.getvalue())
            write_json(rec_path, record)
        model.eval()
        predictor = model if method is None else method.predictor()
        return TrainedModel(name, model, record, predictor, kind)

    def _fit(self, kind: str, model: torch.nn.Module, method: Any, sampler: EpisodeSampler) -> List[Dict[str, Any]]:
        a = self.args
        if kind == "mmnet":
            trainer = Trainer(
                model,
                TrainConfig(
                    steps=a.steps,
                    batch_episodes=self.batch_episodes,
                    device=str(self.device),
                    progress=False,
                    log_every=1,
                ),
            )
            trainer.fit(sampler)
            return [
                {"step": r["step"], "loss": r["loss"], "accuracy": r["accuracy"]}
                for r in trainer.history
                if "loss" in r
            ]
        history = []
        for step in range(1, a.steps + 1):
            batch = [ep.to(self.device) for ep in sampler.sample_batch(self.batch_episodes)]
            history.append({"step": step, "loss": float(method.train_step(batch))})
        return history

    # ------------------------------------------------------------------ parts
    def run(self, parts: Sequence[str]) -> None:
        for part in parts:
            t0 = time.perf_counter()
            self.log(f"== {part}")
            getattr(self, f"part_{part}")()
            self.results["parts"].setdefault(part, {})["seconds"] = time.perf_counter() - t0
            self.save()
        self.write_report()

    def save(self) -> None:
        self.results["config"] = self.describe()
        write_json(self.out / "results.json", self.results)
