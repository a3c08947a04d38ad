"""The numbered notebooks: stored without outputs, and run top to bottom in fast mode on a tiny fixture;
plus quick checks of the figure functions they call."""
from __future__ import annotations

import io
import json
import os
import re

import nbformat
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.text import Text
from PIL import Image

from mmreason import notebooks, paths
from mmreason.evaluation import analysis, plots

from conftest import make_hm, write_photo

# Every figure each notebook writes in fast mode (04 draws one figure per case user: 2 in fast mode).
FIGURES = {
    "01-data-prep": ["01_articles.png", "01_purchases_per_user.png", "01_attribute_distributions.png",
                     "01_target_length.png", "01_hook_shares.png"],
    "02-training": ["02_training_curves.png", "02_clip_evidence.png"],
    "03-diversity-analysis": ["03_accuracy_vs_diversity.png", "03_personalisation.png", "03_baselines_ablations.png",
                              "03_privacy.png"],
    "04-case-studies": ["04_case_1.png", "04_case_2.png"],
}


def test_the_four_notebooks_are_stored_without_outputs_and_with_a_parameters_cell():
    found = notebooks.notebooks()
    assert [p.stem for p in found] == list(FIGURES)
    for path in found:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        # nbformat 4.5 cells carry an id; reading adds a missing one with only a warning (to be an error)
        assert all("id" in c for c in json.loads(path.read_text())["cells"]), f"{path.name}: a cell without an id"
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name} has outputs"
        params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(params) == 1 and "FAST" in params[0].source and "FIGURES_DIR" in params[0].source, path.name
        source = "".join(c.source for c in code)
        for name in FIGURES[path.stem]:  # every figure the test expects is named there ("04_case_{i}.png")
            assert re.sub(r"_\d+\.png$", "_", name) in source, (path.name, name)


def test_readme_shows_every_committed_figure():
    readme = (paths.REPO_ROOT / "README.md").read_text()
    shown = set(re.findall(r"\(figures/([\w.-]+\.png)\)", readme))
    committed = {p.name for p in (paths.REPO_ROOT / "figures").glob("*.png")}
    assert shown == committed
    for names in FIGURES.values():  # the full-mode set includes every figure fast mode writes
        assert set(names) <= committed


# ----------------------------------------------------------------------------- figure functions

def _chromatic_share(png) -> float:
    """Share of pixels with a hue (channels spread > 40): our data colours. Axes, text, grid are grey."""
    with Image.open(png) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    return float((a.max(-1) - a.min(-1) > 40).mean())


def assert_png_has_content(path) -> None:
    """More coloured pixels than an empty, labelled axes of the same size (which has none): the file
    size cannot tell, an empty axes saves at ~10 KB."""
    with Image.open(path) as im:
        w, h = im.size
    empty = Figure(figsize=(w / plots.DPI, h / plots.DPI))
    empty.subplots().set(title="an empty axes", xlabel="x", ylabel="y")
    buf = io.BytesIO()
    empty.savefig(buf, dpi=plots.DPI, facecolor="white")
    # 0.002: the sparsest figure, the decoder scatter, is 0.005 coloured in fast mode, 0.006 committed
    assert _chromatic_share(path) > _chromatic_share(buf) + 0.002, f"{path.name} looks empty"


def _png(fig, tmp_path, name):
    out = plots.save(fig, tmp_path / name)
    assert_png_has_content(out)
    return out


def _hbars(ax) -> list[tuple[float, float]]:
    """(y centre, length) of each horizontal bar."""
    return [(p.get_y() + p.get_height() / 2, p.get_width()) for p in ax.patches if isinstance(p, Rectangle)]


def _texts(fig) -> str:
    return "\n".join(t.get_text() for t in fig.findobj(Text) if t.get_text())


def test_training_curves_from_csv_logs_of_a_resumed_run(tmp_path):
    for version, steps in enumerate([range(0, 60, 10), range(50, 100, 10)]):
        d = tmp_path / "run" / "logs" / f"version_{version}"
        d.mkdir(parents=True)
        rows = [{"step": s, "train/loss": 5 - s / 50, "lr-AdamW/pg1": 1e-3, "train/tokens_per_s": 900 + version}
                for s in steps] + [{"step": steps[-1], "val/loss": 4.0 - version}]
        pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    log = analysis.training_log(tmp_path / "run")
    assert log["step"].tolist() == list(range(0, 100, 10))
    assert log.set_index("step").loc[50, "tokens_per_s"] == 901  # the resumed run's value wins
    assert log["val_loss"].notna().sum() == 2
    fig = plots.training_curves(log, {"val_ppl": 7.4, "unigram_val_ppl": 266.0})
    loss, lr, tps = fig.axes
    train_line, val_line = loss.get_lines()
    assert train_line.get_xdata().tolist() == log["step"].tolist()
    np.testing.assert_allclose(train_line.get_ydata(), [5 - s / 50 for s in range(0, 100, 10)])  # CSV round trip
    assert val_line.get_xydata().tolist() == [[50, 4.0], [90, 3.0]]
    np.testing.assert_allclose(lr.get_lines()[0].get_ydata(), [1e-3] * 10)
    assert tps.get_lines()[0].get_ydata().tolist() == [900] * 5 + [901] * 5
    assert "val ppl 7.40 vs unigram 266.0" in loss.get_title()
    _png(fig, tmp_path, "curves.png")
    fig = plots.training_curves(log.assign(tokens_per_s=np.nan))  # not logged: a note, no line
    assert fig.axes[2].get_lines() == [] and "tokens/s not logged" in _texts(fig)
    _png(fig, tmp_path, "no_tps.png")


def test_decoding_and_ablation_charts(tmp_path):
    sweep = pd.DataFrame([
        {"decoder": name, "strategy": d.strategy, "temperature": d.temperature, "top_p": d.top_p,
         "bleu4": 14 - i, "cider": 0.4 - i / 20, "distinct2": 0.05 + i / 20, "usr": 0.8 + i / 40,
         "self_bleu4": 98 - 5 * i} for i, (name, d) in enumerate(analysis.DECODERS.items())])
    fig = plots.accuracy_vs_diversity(sweep, 150)
    for ax, (y, x) in zip(fig.axes, [(y, x) for y in ("bleu4", "cider") for x in ("distinct2", "usr", "self_bleu4")]):
        points = np.vstack([c.get_offsets() for c in ax.collections])  # one marker per decoder
        np.testing.assert_allclose(points, sweep[[x, y]].to_numpy())
    _png(fig, tmp_path, "sweep.png")

    psweep = pd.DataFrame({"decoder": ["greedy", "sample"], "personalised_share": [1.0, 1.0],
                           "cross_user_distance": [0.3, 0.6], "noise_distance": [0.0, 0.4], "articles": [25, 25]})
    fig = plots.personalisation(psweep)
    # greedy on top (y = 1), sample below (y = 0); between-users bar above the noise bar of each
    bars = sorted((round(y, 6), w) for y, w in _hbars(fig.axes[0]))
    assert bars == [(-0.2, 0.4), (0.2, 0.6), (0.8, 0.0), (1.2, 0.3)]
    _png(fig, tmp_path, "personalisation.png")

    results = json.loads((paths.REPO_ROOT / "results" / "cpu" / "metrics.json").read_text())
    fig = plots.baselines_ablations(results)
    for ax, (label, key, _) in zip(fig.axes, plots.ABLATION_METRICS):
        want = [v.get(key) for split in results["results"].values() for v in split.values()]
        want = [np.nan if v is None else v for v in want]  # no value: JSON null or NaN
        heights = [p.get_height() for p in ax.patches]
        assert sorted(h for h in heights if not np.isnan(h)) == sorted(v for v in want if not np.isnan(v)), label
        # one n/a per system with no value on any test set (labels per bar overlapped), else one per bar
        per_system = np.isnan(np.array(want, dtype=float).reshape(len(results["results"]), -1))
        expected = sum(1 if col.all() else int(col.sum()) for col in per_system.T)
        assert [t.get_text() for t in ax.texts].count("n/a") == expected, label
    _png(fig, tmp_path, "ablations.png")


def test_case_study_figure_with_missing_photos(tmp_path):
    write_photo(tmp_path / "a.jpg", (20, 20, 20))
    recent = pd.DataFrame({"prod_name": ["Strap top", "Gone"], "colour_group_name": ["Black", "Red"],
                           "days_ago": [3, 40], "photo_path": [str(tmp_path / "a.jpg"), str(tmp_path / "missing.jpg")]})
    case = {"customer_id": "a" * 64, "day": "2020-01-01", "recent": recent, "silver": "In black. " * 30,
            "article": {"prod_name": "Skinny jeans", "product_type_name": "Trousers", "colour_group_name": "Black",
                        "photo_path": ""},
            "example": {"hook_kind": "colour", "user_profile": "age 25-34; 2 earlier purchases", "product": "name: x",
                        "item_copy": "Skinny jeans in stretch denim.", "evidence": "Trousers, Black. black bought twice"},
            "decoders": {"greedy": {"candidates": ["x"], "chosen": None, "rejected": [("Red jeans.", ["wrong_colour"])]},
                         "beam": {"candidates": ["a", "b"], "chosen": "Black jeans.", "rejected": []},
                         # a shown copy that says satin where the article's own copy says denim: flagged below it
                         "sample": {"candidates": ["c"], "rejected": [],
                                    "chosen": "For you in black. Skinny jeans in washed satin."}}}
    fig = plots.case_study(case)
    photos = [im.get_array().shape for ax in fig.axes for im in ax.get_images()]
    assert photos.count((48, 32, 3)) == 1 and len(photos) == 3  # the one readable photo; two grey boxes
    text = _texts(fig)
    assert text.count("no photo") == 2 and "3 days ago" in text and "RECOMMENDED: Skinny jeans" in text
    assert "evidence: Trousers, Black. black bought twice" in text  # what the hook rests on, to check it by
    for line in ("greedy: no candidate passed the filter", "rejected (wrong_colour): Red jeans.", "beam: shown",
                 "Black jeans.", "details its own copy states otherwise: fabric satin (its own copy: denim)"):
        assert line in text, line
    assert text.count("states otherwise") == 1  # the other shown reason states no detail
    _png(fig, tmp_path, "case.png")


# ----------------------------------------------------------------------------- the notebooks, fast mode

def test_a_notebook_that_stops_in_a_cell_is_one_line_naming_the_error_and_the_executed_copy(tmp_path, monkeypatch,
                                                                                             capsys):
    # 04 before 02 has trained a run: before, nbclient's whole traceback and exit 1 after a page of kernel output
    for var, sub in (("MMREASON_ARTIFACTS", "artifacts"), ("MMREASON_FIGURES", "figures"), ("MMREASON_HM_DIR", "hm")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    assert notebooks.main(["--fast", "--only", "04"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: 04-case-studies.ipynb stopped in a cell with FileNotFoundError: "
                                              "no checkpoint in "), err
    assert err.endswith("(traceback in the executed copy, artifacts/notebooks_fast/04-case-studies.ipynb)"), err
    assert (tmp_path / "artifacts" / "notebooks_fast" / "04-case-studies.ipynb").exists()
    assert notebooks.main(["--only", "99"]) == 2
    assert capsys.readouterr().err.strip() == "error: no notebooks matching ['99'] in notebooks/"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Run 01 -> 04 in fast mode in fresh kernels on a tiny H&M fixture with its own artifacts and figures."""
    root = tmp_path_factory.mktemp("notebooks")
    make_hm(root / "hm", broken_photo=False)  # the held-out test product needs a photo for CLIP retrieval
    env = {**os.environ, "MMREASON_FAST": "1", "MMREASON_HM_DIR": str(root / "hm"),
           "MMREASON_ARTIFACTS": str(root / "artifacts"), "MMREASON_FIGURES": str(root / "figures"),
           "PYTHONWARNINGS": "ignore"}
    failures = {}
    for path in notebooks.notebooks():
        try:
            notebooks.execute(path, root / "executed", timeout=600, cwd=root, env=env)
        except Exception as e:  # keep going: each notebook's test reports its own failure
            failures[path.stem] = f"{type(e).__name__}: {str(e)[-3000:]}"
    return root, failures


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FIGURES))
def test_notebook_runs_in_fast_mode_and_writes_its_figures(executed, name):
    root, failures = executed
    assert name not in failures, failures[name]
    for figure in FIGURES[name]:
        path = root / "figures" / figure
        assert path.exists(), f"{name} did not write {figure}"
        assert_png_has_content(path)
    nb = nbformat.read(root / "executed" / f"{name}.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= len(FIGURES[name])  # the figures are shown
    assert not (root / "artifacts" / "runs" / "cpu").exists()  # fast mode never touches the default run


def test_privacy_chart_plots_each_runs_auc_and_utility(tmp_path):
    """The committed membership report: every plotted AUC is the report's, the reference's missing
    calibrated AUC is left out, and the utility panel has one point per run at (perplexity, copy CIDEr)."""
    report = json.loads((paths.REPO_ROOT / "results" / "privacy" / "cpu.json").read_text())
    fig = plots.privacy_leakage(report)
    leak, util = fig.axes
    xs = sorted(float(x) for line in leak.lines for x in np.atleast_1d(line.get_xdata()) if len(leak.lines))
    want = sorted(float(r[k]) for r in report["runs"] for k in ("example_auc", "customer_auc", "calibrated_example_auc",
                                                                 "calibrated_customer_auc") if not np.isnan(r[k]))
    assert all(any(abs(w - x) < 1e-9 for x in xs) for w in want)  # each AUC is drawn
    points = np.vstack([c.get_offsets() for c in util.collections])
    np.testing.assert_allclose(points, [[r["val_ppl"], r["copy_cider"]] for r in report["runs"]])
    top = max(zip(leak.get_yticks(), (t.get_text() for t in leak.get_yticklabels())))[1]
    assert top == plots._privacy_label(report["runs"][0]) and top.startswith("no DP")  # the first run on top
    _png(fig, tmp_path, "privacy.png")
