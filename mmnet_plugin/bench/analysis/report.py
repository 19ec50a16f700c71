"""``report.md`` of the analysis: each table and figure tied to the paper's claim it tests; a
mixin of :class:`~.core.Analysis`."""

from __future__ import annotations

from .helpers import (
    PAPER_SCHEDULE_EPISODES,
    PIPELINE_CHECK_EPISODES,
    atomic_write_text,
    intervals_overlap,
    percent,
    setting_name,
)

__all__ = ["Report"]


class Report:
    """:meth:`write_report` of :class:`~.core.Analysis`."""

    def write_report(self) -> None:
        a, p = self.args, self.results["parts"]
        episodes = a.steps * self.batch_episodes
        out = [
            f"# MM-Net analyses (paper section 4.6) on `{a.dataset}`",
            "",
            f"Budget: {self.budget()}; seed {a.seed}; Dm={a.dm}, Dr={a.dr} unless varied; device {self.device.type}.",
            "",
            f"Every accuracy below is on the **{a.eval_split}** split"
            + (
                " (classes never trained on; model choices are made here, never on test)."
                if a.eval_split == "val"
                else " (reported, not tuned on: choices are made on val)."
            ),
            "",
        ]
        if episodes < PIPELINE_CHECK_EPISODES:
            out += [
                "**This budget is a pipeline check, not evidence.** With this few training episodes the "
                "models are barely trained and the numbers below say nothing about the paper's claims. "
                "Rerun with a larger `--steps` and `--test-episodes` before drawing conclusions.",
                "",
            ]
        elif episodes < PAPER_SCHEDULE_EPISODES:
            out += [
                f"**Short budget.** {episodes:,} training episodes per model is about "
                f"{100 * episodes / PAPER_SCHEDULE_EPISODES:.1f}% of the 320,000 episodes of the paper's "
                "learning-rate schedule alone (20,000 steps of 16): every finding below is about models early "
                "in training, where a design choice may change how fast a model learns more than where it "
                "ends. Where confidence intervals overlap, no difference is shown.",
                "",
            ]
        out += [
            "Every compared model was initialised from the same seed (inside `torch.random.fork_rng`), "
            "trained on the training stream of the same seed and tested on the same test episodes:",
            "",
        ]
        out += [f"- {k}: `{v[:16]}`" for k, v in sorted(self.results["test_fingerprints"].items())] + [""]
        if "strategy" in p and "table" in p["strategy"]:
            rows = p["strategy"]["rows"]
            out += [
                "## Training strategy (Table 3)",
                "",
                "Claim: training on mixed C-way k-shot episodes gives one model that is at least as good "
                "on every 5-way k-shot test as a model trained on that k alone.",
                "",
                p["strategy"]["table"],
            ]
            mixed = rows[-1]
            notes = []
            for k in range(1, 6):
                s = setting_name(5, k)
                uni = rows[k - 1]["tests"][s]
                m = mixed["tests"][s]
                notes.append(
                    f"5w{k}s: mixed C-way k-shot {percent(m)} vs uniform {percent(uni)} "
                    + (
                        "(CIs overlap: no difference shown)"
                        if intervals_overlap(m, uni)
                        else (
                            "(mixed higher, CIs apart)"
                            if m["accuracy"] > uni["accuracy"]
                            else "(mixed lower, CIs apart)"
                        )
                    )
                )
            out += ["Found: " + "; ".join(notes) + ".", ""]
        if "dr" in p and "table" in p["dr"]:
            rows = p["dr"]["rows"]
            out += [
                "## Contextual learner hidden size (Figure 2)",
                "",
                "Claim: accuracy rises with Dr up to 512 and saturates (the paper uses Dr = 512).",
                "",
                "![Dr sweep](dr.png)",
                "",
                p["dr"]["table"],
            ]
            notes = []
            for s in ("5w1s", "5w5s"):
                pts = [r for r in rows if r["setting"] == s]
                best = max(pts, key=lambda r: r["accuracy"])
                apart = [r["dr"] for r in pts if not intervals_overlap(r, best)]
                notes.append(
                    f"{s}: best Dr={best['dr']} ({percent(best)}); "
                    + (
                        f"CIs apart from the best only for Dr in {apart}"
                        if apart
                        else "all CIs overlap with the best (no effect of Dr shown)"
                    )
                )
            out += ["Found: " + "; ".join(notes) + ".", ""]
        if "tsne" in p and "figure" in p["tsne"]:
            t = p["tsne"]
            out += [
                "## Embedding visualisation (Figure 3)",
                "",
                "Claim: MM-Net's embeddings of unseen classes form tighter, better separated clusters "
                "than Matching Networks'. (Qualitative; judge the figure, no statistic is claimed.)",
                "",
                "![t-SNE](tsne.png)",
                "",
                f"Found: {t['images']} images of test classes {t['classes']}; the two models' 5w5s "
                f"accuracies are MM-Net {percent(t['mmnet_5w5s'])}, Matching Networks "
                f"{percent(t['matchingnet_5w5s'])}"
                + (" (CIs overlap)." if intervals_overlap(t["mmnet_5w5s"], t["matchingnet_5w5s"]) else " (CIs apart).")
                + " Matching Networks' embeddings are its full-context ones (easyfsl); both share Conv-4."
                " Support (g) and query (f) embeddings come from different functions in both models, so "
                "the support stars may sit apart from their class's queries; judge each set's clustering.",
                "",
            ]
        if "similarity" in p and "figure" in p["similarity"]:
            st = p["similarity"]["stats"]
            out += [
                "## Similarity matrices (Figure 4)",
                "",
                "Claim: MM-Net's query-support similarities are more block-diagonal (high within a class, "
                "low across classes) than Matching Networks'.",
                "",
                "![similarities](similarity.png)",
                "",
                "Found (mean dot product, same class / other class): "
                + "; ".join(f"{k} {v['mean_same_class']:.3f} / {v['mean_other_class']:.3f}" for k, v in st.items())
                + ". The panels are raw dot products f(q) . g(x) of each model's embeddings (MM-Net's scores "
                "multiply them by s; Matching Networks scores with cosine on normalised support features), so "
                "the scales differ: compare the contrast within each panel, not values across panels. "
                "Each query row also has its own level (the query's norm), which no decision sees; with every "
                "row standardised (mean 0, standard deviation 1), the mean same-class / other-class value is "
                + "; ".join(
                    f"{k} {v['row_z_same_class']:.2f} / {v['row_z_other_class']:.2f}"
                    for k, v in st.items()
                    if "row_z_same_class" in v
                )
                + " (comparable across models: higher same-class values mean a sharper block diagonal). One "
                "episode: no interval.",
                "",
            ]
        if "ablations" in p and "table" in p["ablations"]:
            out += [
                "## Ablations",
                "",
                "Claims: memory read, the contextual learner and the factorized query branch each help "
                '("full MM-Net" is our default, the residual query branch; "paper query branch" is the '
                "paper's form, a factorized block in place of the fourth); "
                "M = one slot per support item and the nearest-neighbour decision are the paper's choices; "
                "s = 0.125 and the filter init 1.0 are ours (the paper's raw dot product is s = 1). "
                '"CIs overlap" means no difference was shown.',
                "",
                p["ablations"]["table"],
                "",
            ]
        atomic_write_text(self.out / "report.md", "\n".join(out) + "\n")
