"""MM-Net analyses of the paper's section 4.6, reproduced on glyphs, Omniglot or miniImageNet.

Parts (``--parts``, comma separated; default all):

- ``strategy`` (paper Table 3): uniform 1..5-shot models, "mixed k-shot" (5-way, k in 1..5)
  and "mixed C-way k-shot" (C in 2..5, k in 1..5), each tested on 5-way 1..5-shot;
  ``strategy.md``.
- ``dr`` (Figure 2): contextual learner hidden size Dr (``--dr-values``) on 5-way 1-shot and
  5-shot; ``dr.png`` (accuracy with 95% CI bands) and ``dr.md``.
- ``tsne`` (Figure 3): t-SNE of test-image embeddings of 5 test classes (a 5-way 5-shot
  support set; the other images of those classes embedded as queries), MM-Net beside
  Matching Networks; ``tsne.png``.
- ``similarity`` (Figure 4): 25 support x 25 query dot-product similarities of a 5-way 5-shot
  episode sorted by class, MM-Net beside Matching Networks; ``similarity.png``.
- ``ablations``: memory read, contextual learner, query branch, memory slots, decision
  rule, similarity scale and filter init scale, trained and tested on ``--ablation-setting``
  (20-way 1-shot on Omniglot, where 5-way saturates; 5-way 5-shot elsewhere);
  ``ablations.md`` and one training-curve PNG per group (``curves_<group>.png``).

Everything is written under ``--output``: ``results.json`` (every number, the test-episode
fingerprints), ``report.md`` (each table and figure tied to the paper's claim it tests),
and ``models/<key>.json`` + ``.pt``, one record per trained model, so a rerun skips the
models already trained with the same configuration.

Every model: weights initialised from ``--seed`` inside ``torch.random.fork_rng`` (no global
RNG is touched), trained on the training stream of the same seed, and tested on the same
test episodes as every model it is compared with (one seeded sampler per test setting;
their fingerprints are printed and recorded). Each training step draws ``--batch-episodes``
episodes (the paper: 16 on Omniglot, 4 on miniImageNet); the default budget is a pipeline
check that runs in minutes on two CPU cores, not evidence.

Run: ``python -m benchmarks.analysis --dataset glyphs --output runs/analysis``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `mmnet_plugin` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmnet_plugin.arguments import add_common_arguments, positive_int, resolve_device  # noqa: E402
from mmnet_plugin.data import load_dataset  # noqa: E402
from mmnet_plugin.episodes import Episode, EpisodeSampler, IntOrRange  # noqa: E402
from mmnet_plugin.evaluation import EvaluationResult, evaluate  # noqa: E402
from mmnet_plugin.models import MMNet  # noqa: E402
from mmnet_plugin.training import Trainer, TrainConfig  # noqa: E402
from mmnet_plugin.runtime import tune_cpu_allocator  # noqa: E402
from mmnet_plugin.bench.common import safe_torch_load  # noqa: E402  (torch.load with weights_only=True)

__all__ = ["PARTS", "Analysis", "build_parser", "main", "png_size", "row_standardised_contrast"]

PARTS = ("strategy", "dr", "tsne", "similarity", "ablations")
PIPELINE_CHECK_EPISODES = 1000  # below this many training episodes per model, the report says "not evidence"
PAPER_SCHEDULE_EPISODES = 20000 * 16  # the paper halves the learning rate every 20,000 steps of 16 episodes
ABLATION_GROUPS = ("components", "query_branch", "memory_slots", "decision", "similarity_scale", "filter_init_scale")
FORMAT = "mmnet-plugin/analysis/1"
Setting = Tuple[int, int]


# ---------------------------------------------------------------------------- small helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _atomic_savefig(fig: Any, path: Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _atomic_write_bytes(path, buf.getvalue())


def png_size(path: Path) -> Tuple[int, int]:
    """``(width, height)`` of a PNG file from its IHDR chunk.

    Raises:
        ValueError: if the file is not a PNG.
    """
    data = Path(path).read_bytes()[:33]
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG file")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _seed_for(seed: int, role: str, *parts: int) -> int:
    """A seed derived from ``seed``, a role name and integers (stable across runs)."""
    text = f"{seed}|{role}|" + "|".join(str(int(p)) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _key(config: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _pct(r: Dict[str, Any]) -> str:
    return f"{100 * r['accuracy']:.2f} +- {100 * r['ci95']:.2f}"


def _overlap(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether the two 95% intervals overlap."""
    return abs(a["accuracy"] - b["accuracy"]) <= a["ci95"] + b["ci95"]


def row_standardised_contrast(sim: np.ndarray, same: np.ndarray) -> Tuple[float, float]:
    """Mean same-class and other-class similarity after standardising each query's row.

    A nearest-item decision compares similarities within a query's row only, so each row is
    set to mean 0 and standard deviation 1 first: the result is free of the model's scale and
    of each query's norm, and comparable across models.

    Args:
        sim: ``[n_query, n_support]`` similarities.
        same: boolean mask of the same shape, true where query and support share a class.

    Returns:
        ``(mean over same-class entries, mean over other-class entries)``.
    """
    z = (sim - sim.mean(axis=1, keepdims=True)) / (sim.std(axis=1, keepdims=True) + 1e-12)
    return float(z[same].mean()), float(z[~same].mean())


def _setting(ways: IntOrRange, shots: IntOrRange) -> str:
    def f(v: IntOrRange) -> str:
        return str(v) if isinstance(v, int) else f"{v[0]}-{v[1]}"

    return f"{f(ways)}w{f(shots)}s"


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _one_setting(text: str) -> Setting:
    from mmnet_plugin.arguments import settings_arg

    settings = settings_arg(text)
    if len(settings) != 1:
        raise argparse.ArgumentTypeError(f"expected one setting such as 20w1s, got {text!r}")
    return settings[0]


def _subset_of(choices: Sequence[str], what: str) -> Callable[[str], List[str]]:
    """An argparse type: a comma-separated, non-empty subset of ``choices``."""
    def parse(text: str) -> List[str]:
        picked = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in picked if p not in choices]
        if bad or not picked:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {bad or text!r}; choose from {', '.join(choices)}")
        return picked
    return parse


_parts = _subset_of(PARTS, "part")


# ---------------------------------------------------------------------------- the analysis
@dataclass
class TrainedModel:
    """A trained model of the analysis and its record."""

    name: str
    model: torch.nn.Module
    record: Dict[str, Any]
    predictor: Callable[..., torch.Tensor]
    kind: str = "mmnet"


class Analysis:
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
                "classes never trained on (val for choices, test for reporting)")
        self.test_ds = load_dataset(args.dataset, split=args.eval_split, data_root=args.data_root)
        x = self.test_ds.load(np.asarray([0]))
        self.in_channels, self.image_size = int(x.shape[1]), int(x.shape[2])
        self.batch_episodes = args.batch_episodes or (4 if args.dataset == "miniimagenet" else 16)
        # Omniglot 5-way saturates near 100%, where every ablation's interval overlaps: compare at 20-way.
        self.ablation_setting: Setting = tuple(args.ablation_setting or ((20, 1) if args.dataset == "omniglot"
                                                                         else (5, 5)))
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
        return {"dataset": a.dataset, "train_split": a.train_split, "eval_split": a.eval_split,
                "seed": a.seed, "steps": a.steps,
                "batch_episodes": self.batch_episodes, "test_episodes": a.test_episodes,
                "ablation_setting": _setting(*self.ablation_setting),
                "queries": a.queries, "dm": a.dm, "dr": a.dr, "dr_values": list(a.dr_values),
                "in_channels": self.in_channels, "image_size": self.image_size,
                "device_type": self.device.type}

    def budget(self) -> str:
        a = self.args
        return (f"{a.steps} steps x {self.batch_episodes} episodes = {a.steps * self.batch_episodes} training "
                f"episodes per model; {a.test_episodes} {a.eval_split}-split episodes per setting, "
                f"{a.queries} queries/class")

    def log(self, text: str) -> None:
        if not self.args.quiet:
            print(text, flush=True)

    # ------------------------------------------------------------------ episodes
    def test_set(self, ways: int, shots: int) -> Tuple[List[Episode], str]:
        """The test episodes of a setting (drawn once; the same for every model)."""
        key = (ways, shots)
        if key not in self._test_sets:
            sampler = EpisodeSampler(self.test_ds, ways, shots, self.args.queries,
                                     seed=_seed_for(self.args.seed, "test", ways, shots),
                                     episodes=self.args.test_episodes)
            episodes = list(sampler)
            self._test_sets[key] = (episodes, sampler.fingerprint)
            name = _setting(ways, shots)
            self.results["test_fingerprints"][name] = sampler.fingerprint
            self.log(f"test episodes {name}: {len(episodes)}, fingerprint {sampler.fingerprint[:16]}")
        return self._test_sets[key]

    def _train_sampler(self, ways: IntOrRange, shots: IntOrRange) -> EpisodeSampler:
        return EpisodeSampler(self.train_ds, ways, shots, self.args.queries,
                              seed=_seed_for(self.args.seed, "train"), episodes=None)

    # ------------------------------------------------------------------ models
    def mmnet_options(self, **overrides: Any) -> Dict[str, Any]:
        opts: Dict[str, Any] = {"in_channels": self.in_channels, "image_size": self.image_size,
                                "dm": self.args.dm, "dr": self.args.dr}
        opts.update(overrides)
        return opts

    def train(self, name: str, kind: str, ways: IntOrRange, shots: IntOrRange,
              tests: Sequence[Setting], options: Optional[Dict[str, Any]] = None) -> TrainedModel:
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
        config = {"kind": kind, "ways": ways, "shots": shots, "options": options, "steps": a.steps,
                  "batch_episodes": self.batch_episodes, "queries": a.queries, "seed": a.seed,
                  "dataset": a.dataset, "train_split": a.train_split, "device_type": self.device.type}
        key = _key(config)
        if key in self._models:
            tm = self._models[key]
        else:
            tm = self._train_or_load(key, name, kind, ways, shots, options, config)
            self._models[key] = tm
        changed = False
        for w, k in tests:
            setting = _setting(w, k)
            episodes, fp = self.test_set(w, k)
            res = tm.record["tests"].get(setting)
            if res is None or res.get("fingerprint") != fp:
                r: EvaluationResult = evaluate(tm.predictor, episodes, device=self.device, batch_episodes=25)
                tm.record["tests"][setting] = {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes,
                                               "fingerprint": r.fingerprint}
                changed = True
                self.log(f"  {name} on {setting}: {r.summary()}")
        if changed:
            _atomic_write_json(self.out / "models" / f"{key}.json", tm.record)
        return tm

    def _build(self, kind: str, options: Dict[str, Any]) -> Tuple[torch.nn.Module, Any]:
        """Model (and, for Matching Networks, the harness method) with seeded weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed_for(self.args.seed, "init"))
            if kind == "mmnet":
                return MMNet(**options).to(self.device), None
            if kind == "matchingnet":
                from mmnet_plugin.bench.methods.base import MethodContext
                from mmnet_plugin.bench.methods.matchingnet import MatchingNetMethod

                MatchingNetMethod.check_available()
                ctx = MethodContext(self.args.dataset, 5, 5, self.in_channels, self.image_size, self.device,
                                    self.args.steps * self.batch_episodes)
                method = MatchingNetMethod(ctx)
                method.build()
                return method.model, method
        raise ValueError(f"unknown model kind {kind!r}")

    def _train_or_load(self, key: str, name: str, kind: str, ways: IntOrRange, shots: IntOrRange,
                       options: Dict[str, Any], config: Dict[str, Any]) -> TrainedModel:
        a = self.args
        rec_path = self.out / "models" / f"{key}.json"
        pt_path = self.out / "models" / f"{key}.pt"
        model, method = self._build(kind, options)
        record: Optional[Dict[str, Any]] = None
        if a.resume and rec_path.exists() and pt_path.exists():
            try:
                old = json.loads(rec_path.read_text())
                if old.get("config") == json.loads(json.dumps(config, default=str)):
                    model.load_state_dict(safe_torch_load(pt_path, map_location=self.device))  # weights_only=True; ValueError naming the file
                    record = old
                    self.log(f"{name}: reusing {rec_path.name} (trained before)")
            except (ValueError, OSError, RuntimeError) as exc:
                self.log(f"{name}: cannot reuse {rec_path.name} ({exc}); training again")
                record = None
        if record is None:
            self.log(f"{name}: training {kind} on {_setting(ways, shots)} ({a.steps} steps x {self.batch_episodes})")
            sampler = self._train_sampler(ways, shots)
            t0 = time.perf_counter()
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(_seed_for(a.seed, "train-rng"))
                history = self._fit(kind, model, method, sampler)
            record = {"name": name, "config": json.loads(json.dumps(config, default=str)), "history": history,
                      "train_fingerprint": sampler.fingerprint, "train_seconds": time.perf_counter() - t0,
                      "tests": {}}
            buf = io.BytesIO()
            torch.save(model.state_dict(), buf)
            _atomic_write_bytes(pt_path, buf.getvalue())
            _atomic_write_json(rec_path, record)
        model.eval()
        predictor = model if method is None else method.predictor()
        return TrainedModel(name, model, record, predictor, kind)

    def _fit(self, kind: str, model: torch.nn.Module, method: Any, sampler: EpisodeSampler) -> List[Dict[str, Any]]:
        a = self.args
        if kind == "mmnet":
            trainer = Trainer(model, TrainConfig(steps=a.steps, batch_episodes=self.batch_episodes,
                                                 device=str(self.device), progress=False, log_every=1))
            trainer.fit(sampler)
            return [{"step": r["step"], "loss": r["loss"], "accuracy": r["accuracy"]}
                    for r in trainer.history if "loss" in r]
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
        _atomic_write_json(self.out / "results.json", self.results)

    def part_strategy(self) -> None:
        tests = [(5, k) for k in range(1, 6)]
        rows = [(f"uniform 5-way {k}-shot", 5, k) for k in range(1, 6)]
        rows += [("mixed k-shot (5-way, k 1-5)", 5, (1, 5)), ("mixed C-way k-shot (C 2-5, k 1-5)", (2, 5), (1, 5))]
        out = []
        for label, w, k in rows:
            tm = self.train(label, "mmnet", w, k, tests, self.mmnet_options())
            out.append({"model": label, "train": _setting(w, k),
                        "tests": {_setting(*t): tm.record["tests"][_setting(*t)] for t in tests}})
        lines = ["| training | " + " | ".join(f"5-way {k}-shot" for k in range(1, 6)) + " |",
                 "|---|" + "---|" * 5]
        for r in out:
            lines.append(f"| {r['model']} | " + " | ".join(_pct(r["tests"][_setting(*t)]) for t in tests) + " |")
        lines += ["", "Accuracy (%) +- 95% CI; test fingerprints: "
                  + ", ".join(f"{_setting(*t)} `{self.test_set(*t)[1][:16]}`" for t in tests)]
        table = "\n".join(lines) + "\n"
        _atomic_write_text(self.out / "strategy.md", table)
        self.results["parts"]["strategy"] = {"rows": out, "table": table}

    def part_dr(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tests = [(5, 1), (5, 5)]
        rows = []
        for dr in self.args.dr_values:
            for w, k in tests:
                tm = self.train(f"Dr={dr} 5w{k}s", "mmnet", w, k, [(w, k)], self.mmnet_options(dr=dr))
                rows.append({"dr": dr, "setting": _setting(w, k), **tm.record["tests"][_setting(w, k)]})
        fig, ax = plt.subplots(figsize=(6, 4))
        for w, k in tests:
            pts = [r for r in rows if r["setting"] == _setting(w, k)]
            xs = np.array([r["dr"] for r in pts], dtype=float)
            ys = 100 * np.array([r["accuracy"] for r in pts])
            cs = 100 * np.array([r["ci95"] for r in pts])
            ax.plot(xs, ys, marker="o", label=f"5-way {k}-shot")
            ax.fill_between(xs, ys - cs, ys + cs, alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(self.args.dr_values))
        ax.set_xticklabels([str(v) for v in self.args.dr_values])
        ax.set_xlabel("contextual learner hidden size Dr")
        ax.set_ylabel("test accuracy (%), 95% CI band")
        ax.set_title(f"Dr sweep ({self.args.dataset}, {self.args.steps} steps)")
        ax.legend()
        fig.tight_layout()
        _atomic_savefig(fig, self.out / "dr.png", self.args.dpi)
        plt.close(fig)
        lines = ["| Dr | " + " | ".join(_setting(*t) for t in tests) + " |", "|---|" + "---|" * len(tests)]
        for dr in self.args.dr_values:
            cells = [_pct(next(r for r in rows if r["dr"] == dr and r["setting"] == _setting(*t))) for t in tests]
            lines.append(f"| {dr} | " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        _atomic_write_text(self.out / "dr.md", table)
        self.results["parts"]["dr"] = {"rows": rows, "table": table, "figure": "dr.png"}

    def _pair(self) -> Tuple[TrainedModel, TrainedModel]:
        """The 5-way 5-shot MM-Net and Matching Networks models of Figures 3 and 4."""
        mm = self.train("MM-Net 5w5s", "mmnet", 5, 5, [(5, 5)], self.mmnet_options())
        mn = self.train("Matching Networks 5w5s", "matchingnet", 5, 5, [(5, 5)])
        return mm, mn

    @torch.no_grad()
    def _embed(self, tm: TrainedModel, ep: Episode) -> Tuple[np.ndarray, np.ndarray]:
        """``(support [Ns, D], query [Nq, D])`` embeddings of one episode, in eval mode."""
        tm.model.eval()
        e = ep.to(self.device)
        if tm.kind == "mmnet":
            o = tm.model.forward_batch([e])
            return o.support_embeddings[0].cpu().numpy(), o.query_embeddings[0].cpu().numpy()
        m = tm.model
        m.process_support_set(e.support_x, e.support_y)
        q = m.encode_query_features(m.compute_features(e.query_x))
        return m.contextualized_support_features.cpu().numpy(), q.cpu().numpy()

    def _figure_episode(self, queries: Optional[int]) -> Episode:
        """A 5-way 5-shot test episode of 5 seeded test classes; ``queries=None`` takes all of
        the classes' other images (capped by ``--tsne-images``) as queries."""
        rng = np.random.default_rng(_seed_for(self.args.seed, "figure"))
        targets = np.asarray(self.test_ds.targets)
        classes = np.unique(targets)
        picked = rng.choice(classes, size=5, replace=False)
        sup, qry, sy, qy = [], [], [], []
        for label, c in enumerate(picked):
            members = rng.permutation(np.flatnonzero(targets == c))
            n_q = len(members) - 5 if queries is None else queries
            n_q = min(n_q, self.args.tsne_images) if queries is None else n_q
            if len(members) < 5 + n_q or n_q < 1:
                raise ValueError(f"test class {int(c)} has {len(members)} images; need 5 + {n_q}")
            sup += list(members[:5])
            qry += list(members[5:5 + n_q])
            sy += [label] * 5
            qy += [label] * n_q
        images = self.test_ds.load(np.asarray(sup + qry))
        return Episode(images[:len(sup)], torch.tensor(sy), images[len(sup):], torch.tensor(qy),
                       class_ids=[int(c) for c in picked], support_indices=[int(i) for i in sup],
                       query_indices=[int(i) for i in qry])

    def part_tsne(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from sklearn.manifold import TSNE

        mm, mn = self._pair()
        ep = self._figure_episode(None)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        for ax, tm, title in ((axes[0], mm, "MM-Net"), (axes[1], mn, "Matching Networks")):
            s, q = self._embed(tm, ep)
            x = np.concatenate([s, q]).astype(np.float64)
            perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
            y = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=self.args.seed % (2 ** 31)
                     ).fit_transform(x)
            ys, yq = y[:len(s)], y[len(s):]
            for c in range(5):
                col = plt.cm.tab10(c)
                ax.scatter(*yq[ep.query_y.numpy() == c].T, s=10, color=col, alpha=0.6, label=f"class {c}")
                ax.scatter(*ys[ep.support_y.numpy() == c].T, s=120, marker="*", color=col, edgecolor="k")
            ax.set_title(f"{title} (support = stars)")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        _atomic_savefig(fig, self.out / "tsne.png", self.args.dpi)
        plt.close(fig)
        self.results["parts"]["tsne"] = {"figure": "tsne.png", "classes": ep.class_ids,
                                         "images": int(ep.query_x.shape[0] + ep.support_x.shape[0]),
                                         "mmnet_5w5s": mm.record["tests"]["5w5s"],
                                         "matchingnet_5w5s": mn.record["tests"]["5w5s"]}

    def part_similarity(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mm, mn = self._pair()
        ep = self._figure_episode(5)
        so = torch.argsort(ep.support_y, stable=True).numpy()
        qo = torch.argsort(ep.query_y, stable=True).numpy()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        stats = {}
        for ax, tm, title in ((axes[0], mm, "MM-Net"), (axes[1], mn, "Matching Networks")):
            s, q = self._embed(tm, ep)
            sim = (q @ s.T)[qo][:, so]                                   # [25 query, 25 support]
            same = ep.query_y.numpy()[qo][:, None] == ep.support_y.numpy()[so][None, :]
            z_same, z_other = row_standardised_contrast(sim, same)
            stats[title] = {"mean_same_class": float(sim[same].mean()), "mean_other_class": float(sim[~same].mean()),
                            "row_z_same_class": z_same, "row_z_other_class": z_other}
            im = ax.imshow(sim, cmap="viridis")
            for edge in range(5, 25, 5):  # class boundaries
                ax.axhline(edge - 0.5, color="w", lw=0.6)
                ax.axvline(edge - 0.5, color="w", lw=0.6)
            ax.set_title(f"{title}: query . support")
            ax.set_xlabel("support (sorted by class)")
            ax.set_ylabel("query (sorted by class)")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        _atomic_savefig(fig, self.out / "similarity.png", self.args.dpi)
        plt.close(fig)
        self.results["parts"]["similarity"] = {"figure": "similarity.png", "classes": ep.class_ids, "stats": stats}

    @staticmethod
    def ablation_groups() -> Dict[str, List[Tuple[str, Dict[str, Any]]]]:
        """Ablation groups: ``{group: [(label, MMNet overrides)]}``; the first of each is the
        reference (the full model with the analysis defaults)."""
        full = ("full MM-Net", {})
        return {
            "components": [full, ("without memory read", {"use_memory_read": False}),
                           ("without contextual learner (static filters)", {"use_contextual_learner": False}),
                           ("without query branch", {"use_query_branch": False})],
            "query_branch": [("residual query branch (default)", {}),
                             ("residual, static filters", {"use_contextual_learner": False}),
                             ("paper query branch", {"query_branch": "paper"}),
                             ("no query branch (f = g0)", {"use_query_branch": False})],
            "memory_slots": [("M = None (one per support item)", {}), ("M = 2", {"memory_slots": 2}),
                             ("M = 5", {"memory_slots": 5})],
            "decision": [("nearest", {}), ("class_mass", {"decision": "class_mass"})],
            "similarity_scale": [("s = 0.125", {}), ("s = 1.0", {"similarity_scale": 1.0}),
                                 ("s learned", {"similarity_scale": "learned"})],
            "filter_init_scale": [("filter init 1.0", {}), ("filter init 0.1", {"filter_init_scale": 0.1})],
        }

    def part_ablations(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        test = self.ablation_setting
        setting = _setting(*test)
        groups = {}
        lines = [f"All on {setting}, the same {self.args.eval_split}-split episodes "
                 f"(fingerprint `{self.test_set(*test)[1][:16]}`).", ""]
        for group, variants in self.ablation_groups().items():
            if group not in self.args.ablation_groups:
                continue
            rows = []
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, over in variants:
                tm = self.train(f"{group}: {label}", "mmnet", *test, [test], self.mmnet_options(**over))
                r = tm.record["tests"][setting]
                row = {"variant": label, "overrides": over, **r}
                log_scale = getattr(tm.model, "log_scale", None)
                if log_scale is not None:  # where a learned s ended up
                    row["learned_scale"] = float(log_scale.detach().exp())
                rows.append(row)
                hist = tm.record["history"]
                ax.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=label)
            ax.set_xlabel("training step")
            ax.set_ylabel(f"training loss (batch of {self.batch_episodes} episodes)")
            ax.set_title(f"ablation: {group}")
            ax.legend(fontsize=8)
            fig.tight_layout()
            _atomic_savefig(fig, self.out / f"curves_{group}.png", self.args.dpi)
            plt.close(fig)
            ref = rows[0]
            lines += [f"### {group}", "", "| variant | accuracy (%) | vs reference |", "|---|---|---|"]
            for i, r in enumerate(rows):
                cmp = "reference" if i == 0 else ("CIs overlap" if _overlap(r, ref) else
                                                  ("higher, CIs apart" if r["accuracy"] > ref["accuracy"]
                                                   else "lower, CIs apart"))
                ended = f" (s ended at {r['learned_scale']:.3f})" if "learned_scale" in r else ""
                lines.append(f"| {r['variant']}{ended} | {_pct(r)} | {cmp} |")
            lines += ["", f"Training curves: `curves_{group}.png`", ""]
            groups[group] = {"rows": rows, "figure": f"curves_{group}.png"}
        table = "\n".join(lines)
        _atomic_write_text(self.out / "ablations.md", table)
        self.results["parts"]["ablations"] = {"groups": groups, "table": table}

    # ------------------------------------------------------------------ report
    def write_report(self) -> None:
        a, p = self.args, self.results["parts"]
        episodes = a.steps * self.batch_episodes
        out = [f"# MM-Net analyses (paper section 4.6) on `{a.dataset}`", "",
               f"Budget: {self.budget()}; seed {a.seed}; Dm={a.dm}, Dr={a.dr} unless varied; device "
               f"{self.device.type}.", "",
               f"Every accuracy below is on the **{a.eval_split}** split"
               + (" (classes never trained on; model choices are made here, never on test)."
                  if a.eval_split == "val" else " (reported, not tuned on: choices are made on val)."), ""]
        if episodes < PIPELINE_CHECK_EPISODES:
            out += ["**This budget is a pipeline check, not evidence.** With this few training episodes the "
                    "models are barely trained and the numbers below say nothing about the paper's claims. "
                    "Rerun with a larger `--steps` and `--test-episodes` before drawing conclusions.", ""]
        elif episodes < PAPER_SCHEDULE_EPISODES:
            out += [f"**Short budget.** {episodes:,} training episodes per model is about "
                    f"{100 * episodes / PAPER_SCHEDULE_EPISODES:.1f}% of the 320,000 episodes of the paper's "
                    "learning-rate schedule alone (20,000 steps of 16): every finding below is about models early "
                    "in training, where a design choice may change how fast a model learns more than where it "
                    "ends. Where confidence intervals overlap, no difference is shown.", ""]
        out += ["Every compared model was initialised from the same seed (inside `torch.random.fork_rng`), "
                "trained on the training stream of the same seed and tested on the same test episodes:", ""]
        out += [f"- {k}: `{v[:16]}`" for k, v in sorted(self.results["test_fingerprints"].items())] + [""]
        if "strategy" in p and "table" in p["strategy"]:
            rows = p["strategy"]["rows"]
            out += ["## Training strategy (Table 3)", "",
                    "Claim: training on mixed C-way k-shot episodes gives one model that is at least as good "
                    "on every 5-way k-shot test as a model trained on that k alone.", "", p["strategy"]["table"]]
            mixed = rows[-1]
            notes = []
            for k in range(1, 6):
                s = _setting(5, k)
                uni = rows[k - 1]["tests"][s]
                m = mixed["tests"][s]
                notes.append(f"5w{k}s: mixed C-way k-shot {_pct(m)} vs uniform {_pct(uni)} "
                             + ("(CIs overlap: no difference shown)" if _overlap(m, uni) else
                                ("(mixed higher, CIs apart)" if m["accuracy"] > uni["accuracy"]
                                 else "(mixed lower, CIs apart)")))
            out += ["Found: " + "; ".join(notes) + ".", ""]
        if "dr" in p and "table" in p["dr"]:
            rows = p["dr"]["rows"]
            out += ["## Contextual learner hidden size (Figure 2)", "",
                    "Claim: accuracy rises with Dr up to 512 and saturates (the paper uses Dr = 512).", "",
                    "![Dr sweep](dr.png)", "", p["dr"]["table"]]
            notes = []
            for s in ("5w1s", "5w5s"):
                pts = [r for r in rows if r["setting"] == s]
                best = max(pts, key=lambda r: r["accuracy"])
                apart = [r["dr"] for r in pts if not _overlap(r, best)]
                notes.append(f"{s}: best Dr={best['dr']} ({_pct(best)}); "
                             + (f"CIs apart from the best only for Dr in {apart}" if apart
                                else "all CIs overlap with the best (no effect of Dr shown)"))
            out += ["Found: " + "; ".join(notes) + ".", ""]
        if "tsne" in p and "figure" in p["tsne"]:
            t = p["tsne"]
            out += ["## Embedding visualisation (Figure 3)", "",
                    "Claim: MM-Net's embeddings of unseen classes form tighter, better separated clusters "
                    "than Matching Networks'. (Qualitative; judge the figure, no statistic is claimed.)", "",
                    "![t-SNE](tsne.png)", "",
                    f"Found: {t['images']} images of test classes {t['classes']}; the two models' 5w5s "
                    f"accuracies are MM-Net {_pct(t['mmnet_5w5s'])}, Matching Networks "
                    f"{_pct(t['matchingnet_5w5s'])}"
                    + (" (CIs overlap)." if _overlap(t['mmnet_5w5s'], t['matchingnet_5w5s']) else " (CIs apart).")
                    + " Matching Networks' embeddings are its full-context ones (easyfsl); both share Conv-4."
                    " Support (g) and query (f) embeddings come from different functions in both models, so "
                    "the support stars may sit apart from their class's queries; judge each set's clustering.",
                    ""]
        if "similarity" in p and "figure" in p["similarity"]:
            st = p["similarity"]["stats"]
            out += ["## Similarity matrices (Figure 4)", "",
                    "Claim: MM-Net's query-support similarities are more block-diagonal (high within a class, "
                    "low across classes) than Matching Networks'.", "", "![similarities](similarity.png)", "",
                    "Found (mean dot product, same class / other class): "
                    + "; ".join(f"{k} {v['mean_same_class']:.3f} / {v['mean_other_class']:.3f}" for k, v in st.items())
                    + ". The panels are raw dot products f(q) . g(x) of each model's embeddings (MM-Net's scores "
                      "multiply them by s; Matching Networks scores with cosine on normalised support features), so "
                      "the scales differ: compare the contrast within each panel, not values across panels. "
                      "Each query row also has its own level (the query's norm), which no decision sees; with every "
                      "row standardised (mean 0, standard deviation 1), the mean same-class / other-class value is "
                    + "; ".join(f"{k} {v['row_z_same_class']:.2f} / {v['row_z_other_class']:.2f}"
                                for k, v in st.items() if "row_z_same_class" in v)
                    + " (comparable across models: higher same-class values mean a sharper block diagonal). One "
                      "episode: no interval.", ""]
        if "ablations" in p and "table" in p["ablations"]:
            out += ["## Ablations", "",
                    "Claims: memory read, the contextual learner and the factorized query branch each help "
                    "(\"full MM-Net\" is our default, the residual query branch; \"paper query branch\" is the "
                    "paper's form, a factorized block in place of the fourth); "
                    "M = one slot per support item and the nearest-neighbour decision are the paper's choices; "
                    "s = 0.125 and the filter init 1.0 are ours (the paper's raw dot product is s = 1). "
                    "\"CIs overlap\" means no difference was shown.", "",
                    p["ablations"]["table"], ""]
        _atomic_write_text(self.out / "report.md", "\n".join(out) + "\n")


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.analysis", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, default_queries=5)
    parser.add_argument("--train-split", default="train", help="training split (default train)")
    parser.add_argument("--eval-split", default="val",
                        help="split every model is tested on: val (default; where choices are made) or test "
                             "(to report, never to choose)")
    parser.add_argument("--steps", type=positive_int, default=15, help="training steps per model (default 15)")
    parser.add_argument("--batch-episodes", type=positive_int, default=4,
                        help="episodes per training step (default 4; the paper: 16 Omniglot, 4 miniImageNet)")
    parser.add_argument("--test-episodes", type=positive_int, default=50, help="test episodes per setting (default 50)")
    parser.add_argument("--dm", type=positive_int, default=512, help="memory key size Dm (default 512)")
    parser.add_argument("--dr", type=positive_int, default=512, help="contextual learner size Dr (default 512)")
    parser.add_argument("--dr-values", type=_int_list, default=[128, 256, 512, 1024],
                        help="Dr values of the Figure 2 sweep (default 128,256,512,1024)")
    parser.add_argument("--ablation-setting", type=_one_setting, default=None,
                        help="C-way k-shot setting the ablations are trained and tested on (default 20w1s on "
                             "omniglot, where 5-way saturates; 5w5s elsewhere)")
    parser.add_argument("--ablation-groups", type=_subset_of(ABLATION_GROUPS, "ablation group"),
                        default=list(ABLATION_GROUPS),
                        help=f"comma-separated subset of {','.join(ABLATION_GROUPS)} (default all); each group "
                             "trains its reference (the full model) too, or reuses it")
    parser.add_argument("--tsne-images", type=positive_int, default=30,
                        help="other images per class embedded for t-SNE (default 30)")
    parser.add_argument("--parts", type=_parts, default=list(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (default all)")
    parser.add_argument("--output", default="runs/analysis", help="output folder (default runs/analysis)")
    parser.add_argument("--dpi", type=positive_int, default=100, help="figure resolution (default 100)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="retrain every model even when its record exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the analysis; returns the exit status."""
    args = build_parser().parse_args(argv)
    tune_cpu_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        analysis = Analysis(args)
    except (ValueError, OSError) as exc:
        print(f"analysis: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    analysis.log(f"analysis on {args.dataset}: {analysis.budget()}; output {analysis.out}")
    try:
        analysis.run(args.parts)
    except RuntimeError as exc:
        from mmnet_plugin.bench.methods.base import MethodUnavailable

        if not isinstance(exc, MethodUnavailable):
            raise
        print(f"analysis: {exc}", file=sys.stderr)
        return 2
    analysis.results["seconds"] = time.perf_counter() - t0
    analysis.save()
    analysis.log(f"done in {analysis.results['seconds']:.0f} s; report {analysis.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
