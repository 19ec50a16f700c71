"""The parts of the analysis (paper section 4.6): training strategy (Table 3), the Dr sweep
(Figure 2), t-SNE (Figure 3), similarity matrices (Figure 4) and the ablations; a mixin of
:class:`~.core.Analysis`. matplotlib and scikit-learn are imported by the parts that draw."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from mmnet_plugin.episodes import Episode

from .helpers import (
    TrainedModel,
    atomic_write_text,
    intervals_overlap,
    percent,
    row_standardised_contrast,
    save_figure,
    seed_for,
    setting_name,
)

__all__ = ["Parts"]


class Parts:
    """The ``part_*`` methods (and their figures) of :class:`~.core.Analysis`."""

    def part_strategy(self) -> None:
        tests = [(5, k) for k in range(1, 6)]
        rows = [(f"uniform 5-way {k}-shot", 5, k) for k in range(1, 6)]
        rows += [("mixed k-shot (5-way, k 1-5)", 5, (1, 5)), ("mixed C-way k-shot (C 2-5, k 1-5)", (2, 5), (1, 5))]
        out = []
        for label, w, k in rows:
            tm = self.train(label, "mmnet", w, k, tests, self.mmnet_options())
            out.append(
                {
                    "model": label,
                    "train": setting_name(w, k),
                    "tests": {setting_name(*t): tm.record["tests"][setting_name(*t)] for t in tests},
                }
            )
        lines = ["| training | " + " | ".join(f"5-way {k}-shot" for k in range(1, 6)) + " |", "|---|" + "---|" * 5]
        for r in out:
            lines.append(f"| {r['model']} | " + " | ".join(percent(r["tests"][setting_name(*t)]) for t in tests) + " |")
        lines += [
            "",
            "Accuracy (%) +- 95% CI; test fingerprints: "
            + ", ".join(f"{setting_name(*t)} `{self.test_set(*t)[1][:16]}`" for t in tests),
        ]
        table = "\n".join(lines) + "\n"
        atomic_write_text(self.out / "strategy.md", table)
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
                rows.append({"dr": dr, "setting": setting_name(w, k), **tm.record["tests"][setting_name(w, k)]})
        fig, ax = plt.subplots(figsize=(6, 4))
        for w, k in tests:
            pts = [r for r in rows if r["setting"] == setting_name(w, k)]
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
        save_figure(fig, self.out / "dr.png", self.args.dpi)
        plt.close(fig)
        lines = ["| Dr | " + " | ".join(setting_name(*t) for t in tests) + " |", "|---|" + "---|" * len(tests)]
        for dr in self.args.dr_values:
            cells = [
                percent(next(r for r in rows if r["dr"] == dr and r["setting"] == setting_name(*t))) for t in tests
            ]
            lines.append(f"| {dr} | " + " | ".join(cells) + " |")
        table = "\n".join(lines) + "\n"
        atomic_write_text(self.out / "dr.md", table)
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
        rng = np.random.default_rng(seed_for(self.args.seed, "figure"))
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
            qry += list(members[5 : 5 + n_q])
            sy += [label] * 5
            qy += [label] * n_q
        images = self.test_ds.load(np.asarray(sup + qry))
        return Episode(
            images[: len(sup)],
            torch.tensor(sy),
            images[len(sup) :],
            torch.tensor(qy),
            class_ids=[int(c) for c in picked],
            support_indices=[int(i) for i in sup],
            query_indices=[int(i) for i in qry],
        )

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
            y = TSNE(
                n_components=2, perplexity=perplexity, init="pca", random_state=self.args.seed % (2**31)
            ).fit_transform(x)
            ys, yq = y[: len(s)], y[len(s) :]
            for c in range(5):
                col = plt.cm.tab10(c)
                ax.scatter(*yq[ep.query_y.numpy() == c].T, s=10, color=col, alpha=0.6, label=f"class {c}")
                ax.scatter(*ys[ep.support_y.numpy() == c].T, s=120, marker="*", color=col, edgecolor="k")
            ax.set_title(f"{title} (support = stars)")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1].legend(fontsize=7, loc="best")
        fig.tight_layout()
        save_figure(fig, self.out / "tsne.png", self.args.dpi)
        plt.close(fig)
        self.results["parts"]["tsne"] = {
            "figure": "tsne.png",
            "classes": ep.class_ids,
            "images": int(ep.query_x.shape[0] + ep.support_x.shape[0]),
            "mmnet_5w5s": mm.record["tests"]["5w5s"],
            "matchingnet_5w5s": mn.record["tests"]["5w5s"],
        }

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
            sim = (q @ s.T)[qo][:, so]  # [25 query, 25 support]
            same = ep.query_y.numpy()[qo][:, None] == ep.support_y.numpy()[so][None, :]
            z_same, z_other = row_standardised_contrast(sim, same)
            stats[title] = {
                "mean_same_class": float(sim[same].mean()),
                "mean_other_class": float(sim[~same].mean()),
                "row_z_same_class": z_same,
                "row_z_other_class": z_other,
            }
            im = ax.imshow(sim, cmap="viridis")
            for edge in range(5, 25, 5):  # class boundaries
                ax.axhline(edge - 0.5, color="w", lw=0.6)
                ax.axvline(edge - 0.5, color="w", lw=0.6)
            ax.set_title(f"{title}: query . support")
            ax.set_xlabel("support (sorted by class)")
            ax.set_ylabel("query (sorted by class)")
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        save_figure(fig, self.out / "similarity.png", self.args.dpi)
        plt.close(fig)
        self.results["parts"]["similarity"] = {"figure": "similarity.png", "classes": ep.class_ids, "stats": stats}

    @staticmethod
    def ablation_groups() -> Dict[str, List[Tuple[str, Dict[str, Any]]]]:
        """Ablation groups: ``{group: [(label, MMNet overrides)]}``; the first of each is the
        reference (the full model with the analysis defaults)."""
        full = ("full MM-Net", {})
        return {
            "components": [
                full,
                ("without memory read", {"use_memory_read": False}),
                ("without contextual learner (static filters)", {"use_contextual_learner": False}),
                ("without query branch", {"use_query_branch": False}),
            ],
            "query_branch": [
                ("residual query branch (default)", {}),
                ("residual, static filters", {"use_contextual_learner": False}),
                ("paper query branch", {"query_branch": "paper"}),
                ("no query branch (f = g0)", {"use_query_branch": False}),
            ],
            "memory_slots": [
                ("M = None (one per support item)", {}),
                ("M = 2", {"memory_slots": 2}),
                ("M = 5", {"memory_slots": 5}),
            ],
            "decision": [("nearest", {}), ("class_mass", {"decision": "class_mass"})],
            "similarity_scale": [
                ("s = 0.125", {}),
                ("s = 1.0", {"similarity_scale": 1.0}),
                ("s learned", {"similarity_scale": "learned"}),
            ],
            "filter_init_scale": [("filter init 1.0", {}), ("filter init 0.1", {"filter_init_scale": 0.1})],
        }

    def part_ablations(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        test = self.ablation_setting
        setting = setting_name(*test)
        groups = {}
        lines = [
            f"All on {setting}, the same {self.args.eval_split}-split episodes "
            f"(fingerprint `{self.test_set(*test)[1][:16]}`).",
            "",
        ]
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
            save_figure(fig, self.out / f"curves_{group}.png", self.args.dpi)
            plt.close(fig)
            ref = rows[0]
            lines += [f"### {group}", "", "| variant | accuracy (%) | vs reference |", "|---|---|---|"]
            for i, r in enumerate(rows):
                cmp = (
                    "reference"
                    if i == 0
                    else (
                        "CIs overlap"
                        if intervals_overlap(r, ref)
                        else ("higher, CIs apart" if r["accuracy"] > ref["accuracy"] else "lower, CIs apart")
                    )
                )
                ended = f" (s ended at {r['learned_scale']:.3f})" if "learned_scale" in r else ""
                lines.append(f"| {r['variant']}{ended} | {percent(r)} | {cmp} |")
            lines += ["", f"Training curves: `curves_{group}.png`", ""]
            groups[group] = {"rows": rows, "figure": f"curves_{group}.png"}
        table = "\n".join(lines)
        atomic_write_text(self.out / "ablations.md", table)
        self.results["parts"]["ablations"] = {"groups": groups, "table": table}
