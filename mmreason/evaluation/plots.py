"""The notebooks' figures. Each function takes tables or dicts and returns a matplotlib ``Figure``.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot), so they need no display, leak no
global state in tests, and show in a notebook as a cell's last value. ``save`` writes a PNG.

Longer than 400 lines: one function per figure of the four notebooks (in their order, under a heading
per notebook), sharing the helpers at the top; a figure's code is read beside its neighbours more often
than alone. Split it by notebook if it grows further.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from mmreason import metrics as M
from mmreason.features.clip import PhotoError, read_photo

DPI = 120
GREY = "#9e9e9e"
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
IMPERSONAL_HOOKS = ("cold_section", "new_section")  # no shared attribute with the user's history


def save(fig: Figure, path: str | Path, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", facecolor="white")
    return path


def _figure(w: float, h: float, **kw) -> Figure:
    return Figure(figsize=(w, h), layout="constrained", **kw)


def _note(ax, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])


def _thumbnail(ax, path, title: str = "", size: int = 240, edge: str | None = None) -> None:
    """A photo (or a grey 'no photo' box) with a small title; ``edge`` colours a frame around it."""
    img = None
    if isinstance(path, str) and path:
        try:
            img = read_photo(path, max_side=size)
            img.thumbnail((size, size))
        except (PhotoError, FileNotFoundError):
            img = None
    if img is not None:
        ax.imshow(np.asarray(img))
    else:
        ax.imshow(np.full((3, 2, 3), 235, dtype=np.uint8))
        ax.text(0.5, 0.5, "no photo", ha="center", va="center", transform=ax.transAxes, color=GREY)
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(edge is not None)
        if edge:
            s.set_edgecolor(edge)
            s.set_linewidth(3)
    ax.set_title(title, fontsize=8)


# ----------------------------------------------------------------------------- 01: data

def photo_grid(items: pd.DataFrame, ncols: int = 6) -> Figure:
    """Articles' photos with name, type and colour under each."""
    n = len(items)
    nrows = max(1, math.ceil(n / ncols))
    fig = _figure(1.9 * ncols, 2.9 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax, r in zip(axes, items.to_dict("records")):
        _thumbnail(ax, r.get("photo_path"), "\n".join(textwrap.wrap(
            f"{r['prod_name']} ({r['product_type_name']}, {r['colour_group_name']})", 26)[:3]))
    for ax in axes[n:]:
        ax.axis("off")
    return fig


def purchases_per_user(users: pd.DataFrame) -> Figure:
    """Pieces bought per user (log bins) and purchase days per user (which temporal splits a user reaches)."""
    fig = _figure(11, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    n = users.loc[users["n_purchases"] > 0, "n_purchases"]
    edges = [1, 2, 3, 5, 9, 17, 33, 65, 129, np.inf]  # doubling bands: 1, 2, 3-4, 5-8, ...
    labels = [str(lo) if hi - lo == 1 else f"{lo}-{hi - 1}" if hi < np.inf else f"{lo}+"
              for lo, hi in zip(edges[:-1], edges[1:])]
    counts = pd.cut(n, edges, right=False, labels=labels).value_counts().reindex(labels)
    ax1.bar(range(len(counts)), counts.values, color=COLOURS[0], edgecolor="white")
    ax1.set_xticks(range(len(counts)), labels)
    ax1.text(0.97, 0.95, f"median {n.median():.0f}\nmean {n.mean():.1f}", ha="right", va="top",
             transform=ax1.transAxes, fontsize=9)
    ax1.set(xlabel="pieces bought per user (doubling bands)", ylabel="users",
            title=f"{len(n):,} buyers, {int(n.sum()):,} pieces")
    days = users.loc[users["n_days"] > 0, "n_days"].clip(upper=11)
    counts = days.value_counts().reindex(range(1, 12), fill_value=0)
    colours = [GREY, COLOURS[1]] + [COLOURS[0]] * 9
    ax2.bar(counts.index, counts.values, color=colours, edgecolor="white")
    ax2.set_xticks(range(1, 12), [*map(str, range(1, 11)), "11+"])
    ax2.set(xlabel="purchase days per user", ylabel="users", title="Days decide the temporal split")
    ax2.legend(handles=[Rectangle((0, 0), 1, 1, color=c) for c in (GREY, COLOURS[1], COLOURS[0])],
               labels=["train only", "train + test", "train + val + test"], fontsize=8, frameon=False)
    return fig


ATTRIBUTES = {"product_type_name": "product type", "colour_group_name": "colour",
              "graphical_appearance_name": "pattern (graphical appearance)", "section_name": "section"}


def attribute_distributions(examples: pd.DataFrame, items: pd.DataFrame, top: int = 10) -> Figure:
    """Share of purchases (examples) by the article's type, colour, pattern and section: the top values."""
    df = examples[["article_id"]].merge(items[["article_id", *ATTRIBUTES]], on="article_id", how="left")
    fig = _figure(12, 7)
    for ax, (col, label), colour in zip(fig.subplots(2, 2).ravel(), ATTRIBUTES.items(), COLOURS):
        share = df[col].value_counts(normalize=True)
        head = share.head(top)[::-1]
        ax.barh(head.index, head.values, color=colour)
        for y, v in enumerate(head.values):
            ax.text(v, y, f" {100 * v:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, head.max() * 1.2)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_title(f"{label}: top {len(head)} of {len(share)} values "
                     f"({100 * head.sum():.0f}% of purchases)", fontsize=10)
        ax.set_xlabel("share of purchases")
    return fig


def target_lengths(examples: pd.DataFrame) -> Figure:
    """Words per silver reason, and per part: the personalised hook and the product copy."""
    words = examples["reason"].str.split().str.len()
    hook = examples["hook"].str.split().str.len()
    copy = examples["item_copy"].str.split().str.len()
    fig = _figure(11, 3.8)
    ax1, ax2 = fig.subplots(1, 2)
    bins = np.arange(0, max(words.quantile(0.995), 10) + 4, 3)
    ax1.hist(words.clip(upper=bins[-1]), bins=bins, color=COLOURS[0], edgecolor="white")
    ax1.axvline(words.mean(), color="k", ls="--", lw=1)
    ax1.text(words.mean(), ax1.get_ylim()[1] * 0.95, f" mean {words.mean():.1f}", va="top", fontsize=9)
    ax1.set(xlabel="words per silver reason", ylabel="examples", title=f"{len(words):,} targets")
    bins2 = np.arange(0, max(copy.quantile(0.995), hook.max(), 10) + 3, 2)
    ax2.hist(hook.clip(upper=bins2[-1]), bins=bins2, alpha=0.7, color=COLOURS[1], label=f"hook (mean {hook.mean():.1f})")
    ax2.hist(copy.clip(upper=bins2[-1]), bins=bins2, alpha=0.6, color=COLOURS[2], label=f"product copy (mean {copy.mean():.1f})")
    ax2.set(xlabel="words", ylabel="examples", title="The hook is short, the copy carries the length")
    ax2.legend(frameon=False, fontsize=9)
    return fig


def hook_shares(examples: pd.DataFrame) -> Figure:
    """Which hook each target got, and how the personalised share grows with the user's history."""
    fig = _figure(12, 4)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[1.1, 1])
    share = examples["hook_kind"].value_counts(normalize=True)[::-1]
    colours = [GREY if k in IMPERSONAL_HOOKS else COLOURS[0] for k in share.index]
    ax1.barh(share.index, share.values, color=colours)
    for y, v in enumerate(share.values):
        ax1.text(v, y, f" {100 * v:.1f}%", va="center", fontsize=8)
    ax1.set_xlim(0, share.max() * 1.2)
    personal = examples["personalised"].mean()
    ax1.set(xlabel="share of targets", title=f"Hook kinds: {100 * personal:.1f}% personalised")
    ax1.legend(handles=[Rectangle((0, 0), 1, 1, color=c) for c in (COLOURS[0], GREY)],
               labels=["shares attributes with past buys", "impersonal (section only)"], fontsize=8,
               frameon=False, loc="lower right")
    edges = [0, 1, 2, 4, 8, 16, 32, np.inf]
    labels = ["0", "1", "2-3", "4-7", "8-15", "16-31", "32+"]
    band = pd.cut(examples["n_history"], edges, right=False, labels=labels)
    by = examples.groupby(band, observed=False)["personalised"].agg(["mean", "size"])
    ax2.bar(range(len(by)), by["mean"].fillna(0), color=COLOURS[0])
    for x, (m, n) in enumerate(by.itertuples(index=False)):
        ax2.text(x, (0 if np.isnan(m) else m) + 0.01, f"n={n:,}", ha="center", fontsize=8)
    ax2.set_xticks(range(len(by)), labels)
    ax2.set_ylim(0, 1.1)
    ax2.set(xlabel="earlier purchases of the user", ylabel="personalised share",
            title="More history, more hooks to draw on")
    return fig


# ----------------------------------------------------------------------------- 02: training

def training_curves(log: pd.DataFrame, summary: dict | None = None) -> Figure:
    """Train and validation loss, learning rate and tokens/s by step (``analysis.training_log``)."""
    fig = _figure(13, 3.8)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    tr, va = log.dropna(subset=["train_loss"]), log.dropna(subset=["val_loss"])
    ax1.plot(tr["step"], tr["train_loss"], color=COLOURS[0], label="train (batch)")
    ax1.plot(va["step"], va["val_loss"], "o-", color=COLOURS[3], label="validation")
    title = "Loss per reason token"
    if summary and "val_ppl" in summary:
        title += f"\nval ppl {summary['val_ppl']:.2f} vs unigram {summary['unigram_val_ppl']:.1f}"
    ax1.set(xlabel="step", ylabel="cross-entropy (nats)", title=title)
    ax1.legend(frameon=False)
    lr = log.dropna(subset=["lr"])
    ax2.plot(lr["step"], lr["lr"], color=COLOURS[2])
    ax2.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax2.set(xlabel="step", ylabel="learning rate", title="Warm-up, then cosine decay")
    tps = log.dropna(subset=["tokens_per_s"])
    if len(tps):
        ax3.plot(tps["step"], tps["tokens_per_s"], "o-", color=COLOURS[1])
        ax3.axhline(tps["tokens_per_s"].median(), color="k", ls="--", lw=1)
        ax3.set_ylim(0, tps["tokens_per_s"].max() * 1.15)
        ax3.set(xlabel="step", ylabel="tokens / s",
                title=f"Throughput: median {tps['tokens_per_s'].median():,.0f} tokens/s")
    else:
        _note(ax3, "tokens/s not logged\n(logged every 10 batches of an epoch)")
        ax3.set_title("Throughput")
    return fig


def clip_evidence(evidence: dict) -> Figure:
    """The domain CLIP: validation recall by epoch, held-out retrieval, and linear probes vs majority."""
    ev, history = evidence["eval"], evidence.get("history") or []
    fig = _figure(14, 4)
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1, 1.1, 1])
    if history:
        h = pd.DataFrame(history)
        ax1.plot(h["epoch"], h["val_i2t_R@10"], "o-", label="image → text", color=COLOURS[0])
        ax1.plot(h["epoch"], h["val_t2i_R@10"], "s-", label="text → image", color=COLOURS[1])
        if "val_chance_R@10" in h:
            ax1.plot(h["epoch"], h["val_chance_R@10"], ":", color=GREY, label="chance")
        ax1.set(xlabel="epoch", ylabel="validation R@10", title="Domain CLIP training (validation pairs)")
        ax1.legend(frameon=False, fontsize=8)
    else:
        _note(ax1, "no training history\n(pretrained CLIP)")
    r = ev["retrieval"]
    ks = sorted(r["chance"], key=lambda k: int(k.split("@")[1]))  # R@1, R@5, R@10 (a JSON file may sort them as text)
    if not r["n"]:
        _note(ax2, "no held-out product\nwith a photo: no retrieval")
    else:
        x = np.arange(len(ks))
        for i, (name, label) in enumerate((("image_to_text", "image → text"), ("text_to_image", "text → image"))):
            vals = [r[name][k] for k in ks]
            ax2.bar(x + (i - 0.5) * 0.35, vals, 0.35, label=label, color=COLOURS[i])
            for xi, v in zip(x, vals):
                ax2.text(xi + (i - 0.5) * 0.35, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
        ax2.set_xticks(x, ks)
        ax2.set_ylim(0, 1)
        ax2.set(ylabel="recall", title=f"Retrieval on {r['n']:,} held-out products\n(chance: R@{ks[-1][2:]} = "
                                       f"{r['chance'][ks[-1]]:.3f})")
        ax2.legend(frameon=False, fontsize=8, loc="upper left")
    probes = ev["linear_probe"]
    names = list(probes)
    x = np.arange(len(names))
    acc = [probes[t]["accuracy"] for t in names]
    maj = [probes[t]["majority_baseline"] for t in names]
    ax3.bar(x - 0.18, acc, 0.36, color=COLOURS[2], label="linear probe")
    ax3.bar(x + 0.18, maj, 0.36, color=GREY, label="majority class")
    for xi, a, m in zip(x, acc, maj):
        ax3.text(xi - 0.18, a, f"{a:.2f}", ha="center", va="bottom", fontsize=8)
        ax3.text(xi + 0.18, m, f"{m:.2f}", ha="center", va="bottom", fontsize=8)
    ax3.set_xticks(x, [ATTRIBUTES.get(t, t).split(" (")[0] for t in names])
    ax3.set_ylim(0, 1)
    n_test = probes[names[0]]["n_test"] if names else 0
    ax3.set(ylabel="accuracy", title=f"Linear probes on frozen photo embeddings\n({n_test:,} held-out articles)")
    ax3.legend(frameon=False, fontsize=8, loc="upper right")
    return fig


# ----------------------------------------------------------------------------- 03: decoding

def _decoder_styles(names) -> dict:
    markers = ["o", "s", "D", "^", "v", "<", ">", "P", "X", "*"]
    return {n: (COLOURS[i % len(COLOURS)], markers[i % len(markers)]) for i, n in enumerate(names)}


def accuracy_vs_diversity(sweep: pd.DataFrame, n_examples: int | None = None) -> Figure:
    """BLEU-4 and CIDEr of each decoder's top reason against three diversity measures.

    Self-BLEU's axis is reversed so that "more diverse" is to the right in every panel; the sampling
    temperatures are joined by a line.
    """
    fig = _figure(13, 7)
    axes = fig.subplots(2, 3)
    styles = _decoder_styles(sweep["decoder"])
    temps = sweep[(sweep["strategy"] == "sample") & (sweep["top_p"] >= 1.0)].sort_values("temperature")
    xs = [("distinct2", "Distinct-2 (across examples) →"), ("usr", "unique-sentence ratio (USR) →"),
          ("self_bleu4", "← Self-BLEU-4 (lower = more diverse)")]
    for row, (ykey, ylabel) in enumerate([("bleu4", "BLEU-4 vs silver"), ("cider", "CIDEr vs silver")]):
        for col, (xkey, xlabel) in enumerate(xs):
            ax = axes[row, col]
            if len(temps) > 1:
                ax.plot(temps[xkey], temps[ykey], "-", color=GREY, lw=1, zorder=1)
            for r in sweep.to_dict("records"):
                c, m = styles[r["decoder"]]
                ax.scatter(r[xkey], r[ykey], color=c, marker=m, s=60, zorder=2, label=r["decoder"])
            if xkey == "self_bleu4":
                ax.invert_xaxis()
            ax.set(xlabel=xlabel if row else "", ylabel=ylabel if col == 0 else "")
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), frameon=False)
    on = f" on {n_examples} test examples" if n_examples else ""
    fig.suptitle(f"Accuracy against diversity: the top reason of each decoder{on}", fontsize=11)
    return fig


def personalisation(psweep: pd.DataFrame) -> Figure:
    """Per decoder: how far apart two users' reasons for the same article are, beside decoding noise."""
    fig = _figure(10, 0.55 * len(psweep) + 1.6)
    ax = fig.subplots()
    y = np.arange(len(psweep))[::-1]
    ax.barh(y + 0.2, psweep["cross_user_distance"], 0.4, color=COLOURS[0], label="between users (same article)")
    ax.barh(y - 0.2, psweep["noise_distance"], 0.4, color=GREY, label="same user, second draw (noise)")
    for yi, r in zip(y, psweep.to_dict("records")):
        ax.text(r["cross_user_distance"], yi + 0.2, f" {r['cross_user_distance']:.2f}  "
                f"({100 * r['personalised_share']:.0f}% of articles get differing reasons)", va="center", fontsize=8)
        ax.text(r["noise_distance"], yi - 0.2, f" {r['noise_distance']:.2f}", va="center", fontsize=8)
    ax.set_yticks(y, psweep["decoder"])
    ax.set_xlim(0, 1.25)
    n = int(psweep["articles"].max()) if len(psweep) else 0
    ax.set(xlabel="token-Jaccard distance between reasons (0 = identical, 1 = no word shared)",
           title=f"Personalisation: the same {n} articles shown to several users")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return fig


ABLATION_METRICS = [  # (label, key in results, higher is better)
    ("BLEU-4", "bleu4", True), ("CIDEr", "cider", True), ("hook CIDEr", "hook_cider", True),
    ("copy CIDEr", "copy_cider", True), ("Distinct-2", "distinct2", True), ("Self-BLEU-4", "self_bleu4", False),
    ("colour precision", "grounding_colour_precision", True),
    # every shown hook is its evidence's (shown.py's repair): how often the rule, not the model, had to write it
    ("hook written by the rule", "evidence_hook_share", False),
    # the copy states a sleeve length, neckline or fabric that the article's own copy states otherwise
    ("copy contradicts the article's copy", "detail_contradiction", False),
]


SYSTEM_ORDER = ("template", "retrieval", "text_only", "photo_only", "full")  # baselines, ablations, the model


def baselines_ablations(results: dict, metrics=ABLATION_METRICS) -> Figure:
    """``results/<run>/metrics.json`` as bars: each system on both test sets, one panel per metric.
    A metric a system has no value for (no colour named, no history claimed) is marked n/a."""
    res = results["results"]
    splits = list(res)
    found = list(next(iter(res.values())))
    systems = [s for s in SYSTEM_ORDER if s in found] + [s for s in found if s not in SYSTEM_ORDER]
    ncols = 4
    nrows = math.ceil(len(metrics) / ncols)
    fig = _figure(15, 3.3 * nrows + 0.6)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    x = np.arange(len(systems))
    w = 0.8 / len(splits)
    for ax, (label, key, higher) in zip(axes, metrics):
        marks = np.full((len(splits), len(systems)), "", dtype=object)
        for i, split in enumerate(splits):
            vals = [res[split][s].get(key, np.nan) for s in systems]
            vals = [np.nan if v is None else v for v in vals]
            xs = x + (i - (len(splits) - 1) / 2) * w
            ax.bar(xs, vals, w, color=COLOURS[i], label=f"{split} test")
            marks[i] = ["n/a" if np.isnan(v) else "0" if v == 0 else "" for v in vals]
        for j, col in enumerate(marks.T):  # say so where there is no bar to see: once per system where all agree
            spots = [(x[j], col[0])] if len(set(col)) == 1 else [
                (x[j] + (i - (len(splits) - 1) / 2) * w, m) for i, m in enumerate(col)]
            for xi, m in spots:
                if m:
                    ax.text(xi, 0.02, m, ha="center", va="bottom", fontsize=7, rotation=90, color=GREY,
                            transform=ax.get_xaxis_transform())
        ax.set_xticks(x, systems, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[len(metrics):]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(splits), frameon=False)
    meta = results.get("meta", {})
    fig.suptitle(f"Baselines and ablations ({meta.get('n', '?')} examples per test set, "
                 f"decoding {meta.get('decode', '?')} + filter, silver targets)", fontsize=11)
    return fig


def _privacy_label(r: dict) -> str:
    """A run's short name: its DP setting, or its training budget."""
    if r.get("epsilon") is None:
        every = "every customer" in r["training"]
        return f"no DP, {r['training'].split(',')[0]}" + (" (every customer)" if every else "")
    return f"DP, eps {r['epsilon']:.0f} per {r.get('unit') or 'example'}"


def privacy_leakage(report: dict) -> Figure:
    """``results/privacy/cpu.json`` (``python -m mmreason.membership``): each run's membership-attack AUC
    with its 95% interval (plain and difficulty-calibrated, per example and per customer), beside its
    utility (validation perplexity against copy CIDEr)."""
    rows = report["runs"]
    fig = _figure(13, 0.45 * len(rows) + 2.2)
    ax, au = fig.subplots(1, 2, width_ratios=[1.6, 1])
    y = np.arange(len(rows))[::-1]
    series = [("example_auc", "plain, per example", GREY, "o", -0.24),
              ("customer_auc", "plain, per customer", GREY, "s", -0.08),
              ("calibrated_example_auc", "calibrated, per example", COLOURS[0], "o", 0.08),
              ("calibrated_customer_auc", "calibrated, per customer", COLOURS[3], "s", 0.24)]
    for key, label, colour, marker, dy in series:
        vals = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        ci = np.array([r.get(key + "_ci", (np.nan, np.nan)) for r in rows], dtype=float)
        ok = ~np.isnan(vals)
        ax.errorbar(vals[ok], y[ok] + dy, xerr=np.abs(ci[ok].T - vals[ok]), fmt=marker, color=colour,
                    ms=5, capsize=2, label=label)
    ax.axvline(0.5, color="k", lw=0.8, ls="--")
    ax.set_yticks(y, [_privacy_label(r) for r in rows], fontsize=9)
    ax.set_xlabel("membership-attack AUC (0.5: members and held-out customers look alike)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Leakage (95% intervals, bootstrap over customers)", fontsize=10)
    for i, r in enumerate(rows):
        ppl, cider = r.get("val_ppl", np.nan), r.get("copy_cider", np.nan)
        au.scatter([ppl], [cider], color=COLOURS[i % len(COLOURS)], s=30, label=_privacy_label(r))
    au.set_xscale("log")
    au.set_xlabel("validation perplexity (log; lower is better)")
    au.set_ylabel("copy CIDEr, greedy, unseen products")
    au.grid(alpha=0.3)
    au.legend(fontsize=7, loc="best")  # runs of one utility (the DP runs near 0) would overlap as point labels
    au.set_title("Utility", fontsize=10)
    meta = report.get("meta", {})
    fig.suptitle(f"Membership inference against utility: {meta.get('n_members', '?')} member and "
                 f"{meta.get('n_nonmembers', '?')} held-out examples; calibrated = the reference's loss "
                 f"({meta.get('reference', '?')}) minus the run's", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- 04: case studies

def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width) or [""]


def detail_note(reason: str, own_copy: str) -> str:
    """What a reason's copy says about sleeves, neckline or fabric that the article's own copy states otherwise
    (``metrics.detail_conflicts``), as one line; "" when nothing conflicts."""
    conflicts = M.detail_conflicts(M.stated_details(M.split_reason(reason)[1]), M.stated_details(own_copy))
    if not conflicts:
        return ""
    parts = [f"{f} {' / '.join(sorted(said))} (its own copy: {' / '.join(sorted(truth))})"
             for f, (said, truth) in conflicts.items()]
    return "details its own copy states otherwise: " + "; ".join(parts)


def case_study(case: dict, width: int = 190) -> Figure:
    """A user's recent purchases and the recommended article as photos, beside them the prompt's profile, product
    and evidence (what the hook rests on); below, the silver reason and each decoder's reasons: the one shown (or
    that none passed) and the candidates the filter rejected, with why."""
    recent = case["recent"].to_dict("records")
    art = case["article"]
    lines = []  # (text, colour, bold)
    lines.append((f"silver target [{case['example'].get('hook_kind', '')}]:", "black", True))
    lines += [("    " + t, "#333333", False) for t in _wrap(case["silver"], width)]
    for name, d in case["decoders"].items():
        if d["chosen"] is not None:
            lines.append((f"{name}: shown", COLOURS[2], True))
            lines += [("    " + t, "black", False) for t in _wrap(d["chosen"], width)]
            wrong = detail_note(d["chosen"], case["example"].get("item_copy") or "")
            lines += [("    " + t, COLOURS[3], False) for t in (_wrap(wrong, width - 4) if wrong else [])]
        else:
            lines.append((f"{name}: no candidate passed the filter", COLOURS[3], True))
        for text, causes in d["rejected"]:
            wrapped = _wrap(f"rejected ({', '.join(causes)}): {text}", width - 4)
            lines += [("    " + t, COLOURS[3], False) for t in wrapped]
    text_h = 0.19 * len(lines) + 0.2
    n_photos = max(len(recent), 1) + 1
    fig = Figure(figsize=(14, 2.9 + text_h))
    photo_h = 2.9 / (2.9 + text_h)
    w = min(0.75 / n_photos, 0.095)  # leaves ~0.3 of the width for the profile text
    for i, r in enumerate(recent):
        ax = fig.add_axes((0.01 + i * (w + 0.01), 1 - photo_h + 0.02, w, photo_h - 0.09))
        name = "\n".join(textwrap.wrap(str(r.get("prod_name", "?")), 20)[:2])
        _thumbnail(ax, r.get("photo_path"), f"{name}\n{r.get('colour_group_name', '')}\n{r['days_ago']} days ago")
    if not recent:
        ax = fig.add_axes((0.01, 1 - photo_h + 0.02, w, photo_h - 0.09))
        _note(ax, "no earlier\npurchases")
    x0 = 0.01 + max(len(recent), 1) * (w + 0.01) + 0.03
    ax = fig.add_axes((x0, 1 - photo_h + 0.02, w * 1.15, photo_h - 0.09))
    name = "\n".join(textwrap.wrap(str(art["prod_name"]), 22)[:2])
    _thumbnail(ax, art.get("photo_path"), f"RECOMMENDED: {name}\n{art['product_type_name']}, {art['colour_group_name']}",
               edge=COLOURS[3])
    info = fig.add_axes((x0 + w * 1.15 + 0.02, 1 - photo_h + 0.02, max(0.98 - x0 - w * 1.15 - 0.02, 0.05), photo_h - 0.09))
    info.axis("off")
    ex = case["example"]
    info.text(0, 1, "\n".join([f"user {case['customer_id'][:10]}…  on {pd.Timestamp(case['day']).date()}",
                               *textwrap.wrap(f"profile: {ex['user_profile']}", 64)[:7],
                               *textwrap.wrap(f"product: {ex['product']}", 64)[:5],
                               # what the hook rests on, so a reader can check its claim
                               *textwrap.wrap(f"evidence: {ex.get('evidence') or 'none'}", 64)[:4]]),
              va="top", fontsize=7, family="monospace", transform=info.transAxes)
    fig.text(0.01, 1 - photo_h - 0.005, "recent purchases (most recent first)", fontsize=9, va="bottom", color=GREY)
    step = 0.19 / (2.9 + text_h)
    y = 1 - photo_h - 0.02
    for text, colour, bold in lines:
        fig.text(0.01, y, text, fontsize=8.5, va="top", color=colour, weight="bold" if bold else "normal")
        y -= step
    return fig
