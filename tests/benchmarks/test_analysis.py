"""The section 4.6 analyses (``mmnet_plugin.bench.analysis``, ``benchmarks/analysis.py`` in a
checkout) on a tiny ``glyphs`` budget.

One shared run of every part (1 step of 1 episode per model, Dm = Dr = 8, 2 test episodes of
2 queries per class) feeds most tests; the numbers are meaningless, the files are checked.
One torch thread: on a 2-core machine shared with other jobs, more threads are slower.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("easyfsl")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from mmnet_plugin.bench import analysis  # noqa: E402
from mmnet_plugin.data import load_dataset  # noqa: E402
from mmnet_plugin.episodes import Episode, EpisodeSampler  # noqa: E402
from mmnet_plugin.models import MMNet  # noqa: E402

TINY = [
    "--dataset",
    "glyphs",
    "--steps",
    "1",
    "--batch-episodes",
    "1",
    "--test-episodes",
    "2",
    "--queries",
    "2",
    "--dm",
    "8",
    "--dr",
    "8",
    "--dr-values",
    "8,16",
    "--tsne-images",
    "6",
    "--device",
    "cpu",
    "--seed",
    "3",
    "--threads",
    "1",
    "--dpi",
    "50",
    "--quiet",
]


@pytest.fixture(scope="module")
def run_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analysis")
    assert analysis.main(TINY + ["--output", str(out)]) == 0
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _check_png(path: Path, width: int, height: int) -> None:
    assert path.is_file(), f"{path.name} was not written"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert analysis.png_size(path) == (width, height)
    import matplotlib.image

    assert matplotlib.image.imread(str(path)).shape[:2] == (height, width)


def test_strategy_table(run_all: Path) -> None:
    table = (run_all / "strategy.md").read_text()
    for label in ["uniform 5-way 1-shot", "uniform 5-way 5-shot", "mixed k-shot", "mixed C-way k-shot"]:
        assert label in table
    rows = _results(run_all)["parts"]["strategy"]["rows"]
    assert len(rows) == 7
    fps = _results(run_all)["test_fingerprints"]
    for row in rows:
        assert set(row["tests"]) == {f"5w{k}s" for k in range(1, 6)}
        for setting, r in row["tests"].items():
            assert r["fingerprint"] == fps[setting]  # every model on the same test episodes
            assert 0.0 <= r["accuracy"] <= 1.0 and r["ci95"] >= 0.0


def test_dr_figure(run_all: Path) -> None:
    _check_png(run_all / "dr.png", 300, 200)  # 6 x 4 inches at --dpi 50
    rows = _results(run_all)["parts"]["dr"]["rows"]
    assert sorted({r["dr"] for r in rows}) == [8, 16]
    assert {r["setting"] for r in rows} == {"5w1s", "5w5s"}


def test_tsne_and_similarity_figures(run_all: Path) -> None:
    _check_png(run_all / "tsne.png", 500, 230)
    _check_png(run_all / "similarity.png", 500, 230)
    parts = _results(run_all)["parts"]
    assert parts["tsne"]["images"] == 5 * (5 + 6)
    assert set(parts["similarity"]["stats"]) == {"MM-Net", "Matching Networks"}
    for st in parts["similarity"]["stats"].values():
        # rows standardised: per row 5 same-class and 20 other-class entries sum to 0
        assert abs(st["row_z_same_class"] + 4 * st["row_z_other_class"]) < 1e-6
        assert st["row_z_same_class"] != 0.0


def test_ablations_tables_and_curves(run_all: Path) -> None:
    groups = _results(run_all)["parts"]["ablations"]["groups"]
    assert set(groups) == {
        "components",
        "query_branch",
        "memory_slots",
        "decision",
        "similarity_scale",
        "filter_init_scale",
    }
    fp = _results(run_all)["test_fingerprints"]["5w5s"]
    for name, g in groups.items():
        _check_png(run_all / f"curves_{name}.png", 300, 200)
        assert all(r["fingerprint"] == fp for r in g["rows"])
    text = (run_all / "ablations.md").read_text()
    assert "without contextual learner" in text and "paper query branch" in text and fp[:16] in text
    learned = {r["variant"]: r.get("learned_scale") for r in groups["similarity_scale"]["rows"]}
    assert learned["s = 0.125"] is None and learned["s = 1.0"] is None  # fixed scales record nothing
    assert learned["s learned"] > 0 and f"s learned (s ended at {learned['s learned']:.3f})" in text


def test_report_states_budget_and_claims(run_all: Path) -> None:
    report = (run_all / "report.md").read_text()
    assert "1 steps x 1 episodes" in report
    assert "pipeline check, not evidence" in report
    for heading in ["Table 3", "Figure 2", "Figure 3", "Figure 4", "Ablations"]:
        assert heading in report
    assert "Claim:" in report
    assert "on the **val** split" in report  # choices are made on val, and the report says so
    assert _results(run_all)["config"]["eval_split"] == "val"


def test_evaluating_on_trained_classes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for train, ev in (("trainval", "val"), ("train", "train")):
        code = analysis.main(TINY + ["--output", str(tmp_path), "--train-split", train, "--eval-split", ev])
        assert code == 2
        assert f"--eval-split {ev} holds classes of --train-split {train}" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # refused before any training


def test_resume_skips_trained_models_and_parts_select(run_all: Path, tmp_path: Path) -> None:
    out = tmp_path / "again"
    shutil.copytree(run_all, out)
    records = sorted((out / "models").glob("*.json"))
    before = {p.name: p.read_text() for p in records}
    assert analysis.main(TINY + ["--output", str(out), "--parts", "dr"]) == 0
    after = {p.name: p.read_text() for p in sorted((out / "models").glob("*.json"))}
    assert after == before  # nothing retrained or retested
    assert "strategy" in _results(out)["parts"]  # earlier parts kept


def test_bad_part_is_rejected() -> None:
    with pytest.raises(SystemExit):
        analysis.build_parser().parse_args(["--parts", "nope"])


def test_without_contextual_learner_query_embedding_ignores_support() -> None:
    ds = load_dataset("glyphs", split="test")
    sampler = EpisodeSampler(ds, 5, 2, 2, seed=1, episodes=2)
    a, b = list(sampler)
    swapped = Episode(b.support_x, b.support_y, a.query_x, a.query_y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ablated = MMNet(in_channels=1, image_size=28, dm=8, dr=8, use_contextual_learner=False).eval()
        full = MMNet(in_channels=1, image_size=28, dm=8, dr=8).eval()
    with torch.no_grad():
        full.query_gate.fill_(1.0)  # the residual branch starts closed; open it
        qa = ablated.forward_batch([a]).query_embeddings
        qb = ablated.forward_batch([swapped]).query_embeddings
        assert torch.allclose(qa, qb, atol=1e-6)
        assert ablated.contextual is None
        fa = full.forward_batch([a]).query_embeddings
        fb = full.forward_batch([swapped]).query_embeddings
        assert not torch.allclose(fa, fb, atol=1e-6)  # the full model's queries do see the support


def test_ablation_setting_option() -> None:
    assert analysis.build_parser().parse_args(["--ablation-setting", "20w1s"]).ablation_setting == (20, 1)
    for bad in ("5w1s,5w5s", "twenty"):
        with pytest.raises(SystemExit):
            analysis.build_parser().parse_args(["--ablation-setting", bad])


def test_ablation_groups_option_runs_only_the_named_groups(tmp_path: Path) -> None:
    parser = analysis.build_parser()
    assert parser.parse_args([]).ablation_groups == list(analysis.ABLATION_GROUPS)
    with pytest.raises(SystemExit):
        parser.parse_args(["--ablation-groups", "components,nope"])
    out = tmp_path / "subset"
    assert analysis.main(TINY + ["--output", str(out), "--parts", "ablations", "--ablation-groups", "decision"]) == 0
    groups = _results(out)["parts"]["ablations"]["groups"]
    assert list(groups) == ["decision"]
    assert [r["variant"] for r in groups["decision"]["rows"]] == ["nearest", "class_mass"]
    assert len(list((out / "models").glob("*.pt"))) == 2  # the reference and the one variant, nothing else
    assert (out / "curves_decision.png").is_file() and not (out / "curves_components.png").exists()


def test_ablation_group_names_match_the_groups_built() -> None:
    assert tuple(analysis.Analysis.ablation_groups()) == analysis.ABLATION_GROUPS


@pytest.mark.parametrize(
    "steps,expected,absent",
    [
        (1, "pipeline check, not evidence", "Short budget"),
        (250, "Short budget.** 4,000 training episodes per model is about 1.2%", "not evidence"),
        (20000, "Budget: 20000 steps", "Short budget"),
    ],
)
def test_report_says_how_far_the_budget_goes(tmp_path: Path, steps: int, expected: str, absent: str) -> None:
    args = analysis.build_parser().parse_args(TINY + ["--steps", str(steps), "--output", str(tmp_path)])
    a = analysis.Analysis.__new__(analysis.Analysis)  # the report alone: no data, no training
    a.args, a.out, a.batch_episodes, a.device = args, tmp_path, 16, torch.device("cpu")
    a.results = {"test_fingerprints": {}, "parts": {}}
    a.write_report()
    report = (tmp_path / "report.md").read_text()
    assert expected in report and absent not in report


def test_row_standardised_contrast_works_per_query_row() -> None:
    import numpy as np

    same = np.array([[True, False, False], [False, True, False]])
    # row 1 is row 0 scaled by 100 and shifted: per row, the same contrast
    sim = np.array([[3.0, 1.0, 2.0], [100.0, 300.0, 200.0]]) + np.array([[0.0], [50.0]])
    z_same, z_other = analysis.row_standardised_contrast(sim, same)
    assert z_same == pytest.approx(np.sqrt(1.5)) and z_other == pytest.approx(-np.sqrt(1.5) / 2)
    # standardising columns instead would mix the rows' scales and give another answer
    zc = (sim - sim.mean(0)) / sim.std(0)
    assert abs(zc[same].mean() - z_same) > 0.1
