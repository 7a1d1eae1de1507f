"""The charts: PNG files under results/plots/, which report.md embeds and `dvc plots show` shows
as image plots (no network needed, unlike its vega data plots).

Deterministic: the same data gives the same bytes. The figures are drawn with the Agg renderer
on matplotlib's own font (DejaVu Sans, shipped with it: a system font cannot change the
output), at a fixed size and dpi, and the PNG carries no software version or date.
"""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

from .jsonl import write_bytes

# file -> (title, what to read from it): the report prints the second as the chart's caption
CHARTS = {
    "scores.png": ("Score by method", "Each dot is a method's mean over the test tasks, with its 95% bootstrap interval over"
                   " tasks; ADS is the dark dot on top, the others from the best down, the dotted line the no-data policy. The intervals are wide because tasks"
                   " differ; whether ADS beats a method is the paired difference in the tables above."),
    "by_category.png": ("ADS minus each method, by category", "Blue cells: ADS scored higher than the method on that category's"
                        " test tasks; red: lower. Few tasks per category, so read the pattern, not one cell."),
    "train_progress.png": ("Training by iteration", "Mean gain of the sampled trajectories over the no-data policy (with its 95%"
                           " interval over tasks when scored in the likelihood lens), their cost, and the reward that"
                           " rejection sampling ranks by."),
    "api_mix.png": ("What the optimizer asked for", "Calls per API in each iteration's sampled trajectories, with the"
                    " trajectories that collected nothing (`none`) and those that did not parse."),
    "gain_cost.png": ("Gain against cost, every train trajectory", "Each dot is one sampled trajectory; a ringed dot cleared the"
                      " noise test; a star is the one its task kept. Above 0: the data helped the policy."),
}
UNITS = {"metric": "metric score (0 to 1)", "likelihood": "log2 p(reference) per byte (higher is better)"}
GAIN_UNITS = {"metric": "metric gain", "likelihood": "gain, bits per byte"}
ADS_COLOUR, OTHER_COLOUR, REFERENCE_COLOUR = "#1f3b73", "#8fa8d8", "#c8c8c8"
RC = {"font.family": "DejaVu Sans", "font.size": 9, "axes.titlesize": 10, "figure.dpi": 100, "savefig.dpi": 100,
      "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "ads", "path.simplify": True}


def _figure(ncols: int, width: float, height: float, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    fig.suptitle(title, fontsize=11, fontweight="bold")
    return fig, list(axes)


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    write_bytes(path, buffer.getvalue())


def _drawing(draw):
    """Run `draw` under the project's fixed style, whatever the user's matplotlibrc says."""
    import matplotlib

    with matplotlib.rc_context(rc=matplotlib.rcParamsDefault | RC):
        return draw()


# ------------------------------------------------------------------ evaluation


LENS_ORDER = ("metric", "likelihood")
# the reference point's method name (scored with held-out inputs: reported, never a baseline)
REFERENCE = "reference_retrieval"


def method_order(methods: dict) -> list[str]:
    """ADS first, then the other methods from the best mean score down, the reference point last:
    an order that does not depend on how the dict was built (results/evaluation.json sorts keys)."""
    others = sorted((m for m in methods if m not in ("ads", REFERENCE)), key=lambda m: (-methods[m]["score"], m))
    return ["ads"] + others + [m for m in (REFERENCE,) if m in methods]


def evaluation_charts(evaluation: dict, out: Path) -> list[str]:
    """scores.png and by_category.png from results/evaluation.json; returns the files written."""
    lenses = {lens: evaluation["lenses"][lens] for lens in LENS_ORDER if lens in evaluation["lenses"]}

    def draw():
        if not evaluation["completed_tasks"]:  # every task failed: nothing to draw (the report says so)
            return []
        _save(_scores(lenses, evaluation["completed_tasks"]), out / "scores.png")
        _save(_by_category(lenses), out / "by_category.png")
        return ["scores.png", "by_category.png"]

    return _drawing(draw)


def _scores(lenses: dict, n_tasks: int):
    fig, axes = _figure(len(lenses), 4.2 * len(lenses), 4.2, f"{CHARTS['scores.png'][0]} ({n_tasks} test tasks)")
    for ax, (lens, summary) in zip(axes, lenses.items()):
        methods = method_order(summary["methods"])[::-1]  # ADS on top
        means = [summary["methods"][m]["score"] for m in methods]
        cis = [summary["methods"][m].get("ci95", [v, v]) for m, v in zip(methods, means)]
        errors = [[v - lo for v, (lo, _) in zip(means, cis)], [hi - v for v, (_, hi) in zip(means, cis)]]
        colours = [ADS_COLOUR if m == "ads" else REFERENCE_COLOUR if m == REFERENCE else OTHER_COLOUR for m in methods]
        ys = range(len(methods))
        ax.errorbar(means, ys, xerr=errors, fmt="none", ecolor="#555555", elinewidth=0.8, capsize=2)
        ax.scatter(means, ys, color=colours, s=36, zorder=3, edgecolors="black", linewidths=0.4)
        ax.set_yticks(ys, [m.replace("_", " ") for m in methods])
        ax.set_title(f"{lens} lens")
        ax.set_xlabel(UNITS[lens])
        ax.axvline(summary["methods"]["no_data"]["score"], color="black", linewidth=0.6, linestyle=":")
        ax.grid(axis="x", linewidth=0.3, alpha=0.5)
    return fig


def _by_category(lenses: dict):
    fig, axes = _figure(len(lenses), 5.0 * len(lenses), 3.6, CHARTS["by_category.png"][0])
    for ax, (lens, summary) in zip(axes, lenses.items()):
        methods = method_order(summary["methods"])[1:]
        categories = sorted(summary["by_category"])
        cells = [[round(summary["by_category"][c]["ads"] - summary["by_category"][c][m], 3) for m in methods] for c in categories]
        reach = max([abs(v) for row in cells for v in row] + [1e-6])
        image = ax.imshow(cells, cmap="RdBu", vmin=-reach, vmax=reach, aspect="auto")
        ax.set_xticks(range(len(methods)), [m.replace("_", " ") for m in methods], rotation=45, ha="right")
        ax.set_yticks(range(len(categories)), [f"{c} ({summary['by_category'][c]['tasks']})" for c in categories])
        ax.spines[:].set_visible(False)
        for i, row in enumerate(cells):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=7, color="white" if abs(v) > 0.6 * reach else "black")
        ax.set_title(f"{lens} lens: ADS − method")
        fig.colorbar(image, ax=ax, shrink=0.8, label=UNITS[lens].split(" (")[0] + " difference")
    return fig


# ------------------------------------------------------------------ training


TRAIN_CHARTS = ["train_progress.png", "api_mix.png", "gain_cost.png"]


def optimizer_rows(rows: list[dict]) -> list[dict]:
    """The optimizer's own reward rows: the single calls offered beside its trajectories
    (`source: single_call`) left out of its figures."""
    return [r for r in rows if r.get("source", "optimizer") == "optimizer"]


def train_charts(iterations: list[dict], rewards: dict[int, list[dict]], kept: dict[int, set], out: Path) -> list[str]:
    """train_progress.png, api_mix.png and gain_cost.png from each iteration's metrics (train
    manifests), reward rows and kept trajectory ids; returns the files written. The charts are
    the optimizer's: the single calls offered beside its trajectories (`source`) are left out."""
    if not iterations:
        return []
    rewards = {k: optimizer_rows(rows) for k, rows in rewards.items()}

    def draw():
        _save(_progress(iterations), out / "train_progress.png")
        _save(_api_mix(rewards), out / "api_mix.png")
        _save(_gain_cost(rewards, kept, iterations[-1]["lens"]), out / "gain_cost.png")
        return list(TRAIN_CHARTS)

    return _drawing(draw)


def _progress(iterations: list[dict]):
    lens = iterations[-1]["lens"]
    xs = [m["iteration"] for m in iterations]
    fig, axes = _figure(3, 10.0, 3.2, CHARTS["train_progress.png"][0])
    panels = [("mean_gain", f"mean {GAIN_UNITS[lens]}"), ("mean_cost", "mean cost (tokens)"), ("mean_reward", "mean reward")]
    for ax, (key, label) in zip(axes, panels):
        ax.plot(xs, [m[key] for m in iterations], marker="o", color=ADS_COLOUR)
        if key == "mean_gain" and all(m.get("likelihood_gain_ci95") for m in iterations) and lens == "likelihood":
            ax.fill_between(xs, [m["likelihood_gain_ci95"][0] for m in iterations], [m["likelihood_gain_ci95"][1] for m in iterations],
                            color=OTHER_COLOUR, alpha=0.4, linewidth=0)
        if key != "mean_cost":
            ax.axhline(0, color="black", linewidth=0.6, linestyle=":")
        ax.set_xticks(xs)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
    return fig


def _api_mix(rewards: dict[int, list[dict]]):
    counts = {k: collections.Counter(
        "parse error" if "parse_error" in r else c["api"] for r in rows for c in (r["calls"] or [{"api": "none"}]))
        for k, rows in sorted(rewards.items())}
    kinds = sorted({kind for c in counts.values() for kind in c}, key=lambda k: (k in ("none", "parse error"), k))
    fig, axes = _figure(1, 5.0, 3.4, CHARTS["api_mix.png"][0])
    ax, bottom = axes[0], [0] * len(counts)
    xs = list(counts)
    palette = ["#1f3b73", "#4a7bc8", "#8fa8d8", "#e0a040", "#b0b0b0", "#d06060"]
    for colour, kind in zip(itertools.cycle(palette), kinds):
        values = [counts[k][kind] for k in xs]
        ax.bar(xs, values, bottom=bottom, label=kind, color=colour, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("calls (none / parse error: trajectories)")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def _gain_cost(rewards: dict[int, list[dict]], kept: dict[int, set], lens: str):
    fig, axes = _figure(1, 5.6, 3.8, CHARTS["gain_cost.png"][0])
    ax = axes[0]
    palette = ["#4a7bc8", "#e0a040", "#50a050", "#d06060", "#8060c0"]
    for colour, (k, rows) in zip(itertools.cycle(palette), sorted(rewards.items())):
        rows = [r for r in rows if "parse_error" not in r]
        ax.scatter([r["cost"] for r in rows], [r["gain"] for r in rows], s=14, color=colour, alpha=0.7, label=f"iteration {k}",
                   linewidths=0)
        accepted = [r for r in rows if r["accepted"]]
        ax.scatter([r["cost"] for r in accepted], [r["gain"] for r in accepted], s=40, facecolors="none", edgecolors=colour,
                   linewidths=1.0)
        best = [r for r in rows if r["trajectory_id"] in kept.get(k, set())]
        ax.scatter([r["cost"] for r in best], [r["gain"] for r in best], s=90, marker="*", color=colour, edgecolors="black",
                   linewidths=0.6)
    ax.axhline(0, color="black", linewidth=0.6, linestyle=":")
    ax.set_xlabel("cost (tokens read + generated)")
    ax.set_ylabel(GAIN_UNITS[lens])
    ax.scatter([], [], s=40, facecolors="none", edgecolors="grey", label="cleared the noise")
    ax.scatter([], [], s=90, marker="*", color="white", edgecolors="black", linewidths=0.6, label="kept for its task")
    ax.legend(frameon=False, fontsize=8)
    return fig


def markdown(names: list[str], folder: str = "plots") -> list[str]:
    """Report lines for the charts `names`: each image (a relative link) with its caption."""
    lines = []
    for name in names:
        title, caption = CHARTS[name]
        lines += [f"![{title}]({folder}/{name})", "", f"*{title}.* {caption}", ""]
    return lines
