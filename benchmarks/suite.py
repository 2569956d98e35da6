"""The benchmark suite: onnxcrit against the pruning criteria users would otherwise pick, at equal counts.

One command: `python -m benchmarks.suite` (add `--models lenet5,mlp300` for a subset). It trains and caches the
MNIST models on first use (models.py), then for every model:

1. Main comparison. onnxcrit's `optimize()` runs in a fresh process with (a) the paper's defaults (10
   calibration images, lambda 5, threshold 0.1, kept units deployed at their score) and (b) an accuracy budget
   of 0.5 points met on the validation split (10 images; 50 images with margin 2; and `search`, which tries
   10/50/100 images x margin 1/2/4 and keeps the setting removing the most on validation). Its per-layer kept
   counts are then given to every baseline: L1 and L2 norm of the incoming weights, mean activation on the same
   calibration images, Torch-Pruning's magnitude importance on the same weights, random (mean of 5 seeds) and
   the paper's "critical" control (keep the lowest-scored units instead). Baseline masks are deployed as 0/1.
   Every model is rewritten by onnxcrit's graph surgery and evaluated by onnxruntime on the test split: accuracy,
   top-1 agreement with the unpruned model, parameters (the file's tensors) and MACs removed. Scoring time is
   the criterion alone (onnxcrit: building and solving the MIP); peak memory is the peak RSS of the fresh
   process (onnxcrit: the whole optimize call including validation; Torch-Pruning: with torch imported).
2. Robustness: 10 calibration batches (seeds 0-9), 1/5/10/20/50 calibration images, lambda, margin and
   threshold sweeps with the L1 curve on the same axes (PNG).

Writes benchmarks/results/bench_suite.md (every row), bench_suite_summary.md (the table the README includes),
bench_suite.json and bench_suite_pareto.png.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import onnx

from onnxcrit import (compute_scores, keep_by_threshold, keep_first_removed, layer_table, load_network,
                      removal_order, remove_units, to_scales)

from . import methods, models
from .common import RESULTS, logits, publish

POOL = 5000  # calibration pool: the first images of the training split
RANDOM_SEEDS = 5
CONFIGS = [  # (label, optimize options, selection needs the validation split)
    ("paper defaults (N 10, lambda 5, thr 0.1)", dict(num_samples=10, threshold=0.1), False),
    ("budget 0.5 pt (N 10)", dict(num_samples=10, max_accuracy_drop=0.5), True),
    ("budget 0.5 pt (N 50, margin 2)", dict(num_samples=50, margin=2.0, max_accuracy_drop=0.5), True),
    ("budget 0.5 pt, --search", dict(max_accuracy_drop=0.5, search=True), True),
]
RANK_FRACTIONS = (0.7, 0.5, 0.3)  # ranking study: keep this fraction of every layer
LAMBDAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0, 50.0)
MARGINS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
IMAGES = (1, 5, 10, 20, 50)
FRACTIONS = (0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
BATCHES = 10


# --------------------------------------------------------------------------------------------------
# evaluation of a deployed (rewritten) model


class Evaluator:
    def __init__(self, case: models.Case):
        self.case = case
        self.net, self.proto = load_network(case.path)
        self.params, self.macs = totals(self.net, self.proto)
        self.base_pred = self.predict(self.proto, self.net)
        self.base_acc = float(np.mean(self.base_pred == case.y_test) * 100.0)

    def predict(self, model, net) -> np.ndarray:
        return logits(model, net, self.case.x_test).argmax(axis=1)

    def model(self, model, net) -> dict:
        pred = self.predict(model, net)
        params, macs = totals(net, model)
        return dict(params_removed=1.0 - params / self.params, macs_removed=1.0 - macs / self.macs,
                    acc=float(np.mean(pred == self.case.y_test) * 100.0),
                    agreement=float(np.mean(pred == self.base_pred) * 100.0), params_after=params)

    def scales(self, scales: dict[int, np.ndarray]) -> dict:
        model, net = remove_units(self.proto, self.net, scales)
        return self.model(model, net)

    def keep(self, keep: dict[int, np.ndarray]) -> dict:
        return self.scales({i: k.astype(np.float64) for i, k in keep.items()})


def totals(net, model) -> tuple[int, int]:
    """(parameters as the file stores them, MACs per sample) of the linear layers."""
    rows = layer_table(net, model)
    return sum(r["params"] for r in rows), sum(r["macs"] for r in rows)


def counts_of(scales: dict[int, np.ndarray]) -> dict[int, int]:
    return {i: int(np.sum(s > 0)) for i, s in scales.items()}


def pool_of(case: models.Case):
    return case.x_pool[:POOL], case.y_pool[:POOL]


# --------------------------------------------------------------------------------------------------
# 1. the main comparison


def compare(case: models.Case, ev: Evaluator, data_free: dict) -> list[dict]:
    rows = []
    px, py = pool_of(case)
    for label, options, needs_val in CONFIGS:
        opts = dict(options, eval_data=(case.x_val, case.y_val)) if needs_val else dict(options)
        head = dict(model=case.name, config=label, acc_before=ev.base_acc)
        try:
            out, wall, peak = methods.measured_onnxcrit(case.path, (px, py), opts)
        except Exception as exc:  # a budget onnxcrit cannot meet is a result too
            rows.append(dict(head, method="onnxcrit", failed=f"{type(exc).__name__}: {exc}"))
            continue
        report, scales, scores = out["report"], out["scales"], out["scores"]
        if options.get("search"):
            picked = report["options"]
            head["config"] = f"{label} (picked N {picked['num_samples']}, margin {picked['margin']:g})"
            rows.append(dict(head, method="grid", grid=_grid(report)))
        model = onnx.load_from_string(out["model"])
        new_net, _ = load_network(model)
        counts = counts_of(scales)
        scoring = report["timings"]["build"] + report["timings"]["solve"]
        rescaled = any(np.any((s > 0) & (s < 1)) for s in scales.values())
        rows.append(dict(head, method="onnxcrit" + (" (kept units at their score)" if rescaled else ""),
                         seconds=scoring, wall=wall, peak_mb=peak, counts=counts, **ev.model(model, new_net),
                         validation_acc_after=report["accuracy_after"] if needs_val else None))
        if rescaled:
            rows.append(dict(head, method="onnxcrit, kept units at full strength",
                             **ev.keep({i: s > 0 for i, s in scales.items()})))
        calib = px[np.asarray(report["calibration"]["indices"], dtype=np.int64)]
        per_config = dict(data_free)
        per_config["activation"] = methods.measured_criterion("activation", case.path, calib)
        for name, (crit, seconds, peak_mb) in per_config.items():
            rows.append(dict(head, method=name, seconds=seconds, peak_mb=peak_mb,
                             **ev.keep(methods.keep_top(crit, counts))))
        randoms = [ev.keep(methods.keep_top(methods.random_scores(ev.net, s), counts)) for s in range(RANDOM_SEEDS)]
        rows.append(dict(head, method=f"random (mean of {RANDOM_SEEDS})", **_mean_rows(randoms)))
        critical = {i: -np.asarray(s) for i, s in scores.items()}
        rows.append(dict(head, method="critical (highest scores removed)",
                         **ev.keep(methods.keep_top(critical, counts))))
    return rows


def _grid(report: dict) -> str:
    """What each setting of the search removed within the budget, from the report's attempts."""
    cells = []
    for a in report["selection"]["attempts"]:
        within = [t["params_after"] for t in a["tried"] if t["drop"] <= 0.5 + 1e-9]
        removed = pct(1.0 - min(within) / report["params_before"]) if within else "none"
        cells.append(f"{a['num_samples']}/{a['margin']:g} {removed}")
    return ", ".join(cells)


def ranking(case: models.Case, ev: Evaluator, data_free: dict) -> list[dict]:
    """Ranking quality alone: every criterion keeps the same fraction of every layer, deployed 0/1."""
    px, py = pool_of(case)
    orders = {}
    for label, options in (("onnxcrit (N 10)", {}), ("onnxcrit (N 50, margin 2)", dict(num_samples=50, margin=2.0))):
        res = compute_scores(ev.net, px, py, **options)
        order = removal_order(ev.net, res.scores)  # by score, ties by magnitude: what the budget uses
        rank = {i: np.zeros(len(s)) for i, s in res.scores.items()}
        for position, (layer, unit) in enumerate(order):
            rank[layer][unit] = position
        orders[label] = rank
        if not options:
            calib = px[res.calibration_indices]
    orders.update({name: crit for name, (crit, _, _) in data_free.items()})
    orders["activation"] = methods.activation(ev.net, calib)
    rows = []
    for f in RANK_FRACTIONS:
        counts = {i: max(1, int(round(f * ev.net.layers[i].units))) for i in ev.net.scored_indices()}
        for name, crit in orders.items():
            rows.append(dict(model=case.name, fraction=f, method=name, **ev.keep(methods.keep_top(crit, counts))))
        randoms = [ev.keep(methods.keep_top(methods.random_scores(ev.net, s), counts)) for s in range(RANDOM_SEEDS)]
        rows.append(dict(model=case.name, fraction=f, method=f"random (mean of {RANDOM_SEEDS})", **_mean_rows(randoms)))
    return rows


def _mean_rows(rows: list[dict]) -> dict:
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("params_removed", "macs_removed", "acc", "agreement")}
    out["acc_sd"] = float(np.std([r["acc"] for r in rows]))
    return out


# --------------------------------------------------------------------------------------------------
# 2. robustness studies (in this process; the solver runs in its own, as always)


def threshold_point(ev: Evaluator, scores, threshold: float = 0.1) -> tuple[dict, dict]:
    keep = keep_by_threshold(ev.net, scores, threshold)
    ours = ev.scales(to_scales(scores, keep, rescale=True))
    l1 = ev.keep(methods.keep_top(methods.l1(ev.net), {i: int(k.sum()) for i, k in keep.items()}))
    return ours, l1


def studies(case: models.Case, ev: Evaluator) -> dict:
    px, py = pool_of(case)
    out = {"batches": [], "images": [], "lambda": [], "margin": [], "threshold": [], "l1_curve": [],
           "order_n10": [], "order_n50": []}
    for seed in range(BATCHES):
        res = compute_scores(ev.net, px, py, seed=seed)
        ours, l1 = threshold_point(ev, res.scores)
        out["batches"].append(dict(seed=seed, ours=ours, l1=l1))
    for n in IMAGES:
        res = compute_scores(ev.net, px, py, num_samples=n)
        ours, l1 = threshold_point(ev, res.scores)
        out["images"].append(dict(n=n, seconds=res.build_seconds + res.solve_seconds, ours=ours, l1=l1))
        if n == 10:
            for thr in THRESHOLDS:
                ours, l1 = threshold_point(ev, res.scores, thr)
                out["threshold"].append(dict(threshold=thr, ours=ours, l1=l1))
    for key, option, values in (("lambda", "lam", LAMBDAS), ("margin", "margin", MARGINS)):
        for value in values:
            res = compute_scores(ev.net, px, py, **{option: value})
            ours, l1 = threshold_point(ev, res.scores)
            out[key].append({key: value, "ours": ours, "l1": l1})
    for key, options in (("order_n10", {}), ("order_n50", dict(num_samples=50, margin=2.0))):
        res = compute_scores(ev.net, px, py, **options)
        order = removal_order(ev.net, res.scores)  # the budget search walks this curve
        for f in FRACTIONS:
            keep = keep_first_removed(res.scores, order, int(round((1 - f) * len(order))))
            out[key].append(dict(fraction=f, ours=ev.keep(keep)))
    l1_scores = methods.l1(ev.net)
    for f in FRACTIONS:
        counts = {i: max(1, int(round(f * len(s)))) for i, s in l1_scores.items()}
        out["l1_curve"].append(dict(fraction=f, l1=ev.keep(methods.keep_top(l1_scores, counts))))
    return out


# --------------------------------------------------------------------------------------------------
# output


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def main_table(rows: list[dict]) -> str:
    lines = ["| model | selection | method | params removed | MACs removed | acc. before | acc. after | "
             "top-1 agreement | scoring s | peak MB |", "|" + "---|" * 10]
    grids = []
    for r in rows:
        name = models.TITLES[r["model"]]
        if r["method"] == "grid":
            grids.append(f"- {name}: {r['grid']}")
            continue
        if "failed" in r:
            lines.append(f"| {name} | {r['config']} | {r['method']} | failed: {r['failed']} |||||||")
            continue
        acc = f"{r['acc']:.2f}" + (f" ± {r['acc_sd']:.2f}" if "acc_sd" in r else "")
        if r.get("validation_acc_after") is not None:
            acc += f" (val. {r['validation_acc_after']:.2f})"
        secs = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        peak = f"{r['peak_mb']:.0f}" if "peak_mb" in r else "-"
        method = f"**{r['method']}**" if r["method"].startswith("onnxcrit (") or r["method"] == "onnxcrit" \
            else r["method"]
        lines.append(f"| {name} | {r['config']} | {method} | {pct(r['params_removed'])} | "
                     f"{pct(r['macs_removed'])} | {r['acc_before']:.2f} | {acc} | {r['agreement']:.2f} | "
                     f"{secs} | {peak} |")
    if grids:
        lines += ["", "Parameters removed under the 0.5-point budget on validation, per N / margin of the grid (the "
                  "largest is picked; test accuracy plays no part):", "", *grids]
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """One line per model and selection: test accuracy of every method at onnxcrit's counts (best in bold)."""
    groups: dict[tuple, dict] = {}
    for r in rows:
        if r["method"] != "grid" and "full strength" not in r["method"]:
            name = "onnxcrit" if r["method"].startswith("onnxcrit") else r["method"].split(" (")[0]
            groups.setdefault((r["model"], r["config"]), {})[name] = r
    names = list(dict.fromkeys(n for g in groups.values() for n in g))
    lines = ["| model | selection | params removed | MACs removed | acc. before | " + " | ".join(names) + " |",
             "|" + "---|" * (5 + len(names))]
    for (model, config), by in groups.items():
        ours = by["onnxcrit"]
        if "failed" in ours:
            lines.append(f"| {models.TITLES[model]} | {config} | failed |" + " |" * (2 + len(names)))
            continue
        best = max(r["acc"] for r in by.values())
        cells = [(f"**{by[n]['acc']:.2f}**" if by[n]["acc"] == best else f"{by[n]['acc']:.2f}") if n in by else "-"
                 for n in names]
        lines.append(f"| {models.TITLES[model]} | {config} | {pct(ours['params_removed'])} | "
                     f"{pct(ours['macs_removed'])} | {ours['acc_before']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ranking_table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| model | kept per layer | params removed | " + " | ".join(names) + " |", "|" + "---|" * (3 + len(names))]
    groups: dict[tuple, dict] = {}
    for r in rows:
        groups.setdefault((r["model"], r["fraction"]), {})[r["method"]] = r
    for (model, fraction), by in groups.items():
        best = max(r["acc"] for r in by.values())
        cells = [(f"**{by[n]['acc']:.2f}**" if by[n]["acc"] == best else f"{by[n]['acc']:.2f}") if n in by else "-"
                 for n in names]
        first = next(iter(by.values()))
        lines.append(f"| {models.TITLES[model]} | {fraction:.0%} | {pct(first['params_removed'])} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict], ranks: list[dict], study: dict) -> list[str]:
    """The issue's targets, measured."""
    out, losses = [], []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["method"] != "grid":
            groups.setdefault((r["model"], r["config"]), []).append(r)
    for (model, config), group in groups.items():
        ours = [r for r in group if r["method"].startswith("onnxcrit") and "full strength" not in r["method"]]
        if not ours or "failed" in ours[0]:
            losses.append(f"{models.TITLES[model]}, {config}: onnxcrit failed")
            continue
        for r in group:
            if r is not ours[0] and "full strength" not in r["method"] and r["acc"] > ours[0]["acc"] + 1e-9:
                losses.append(f"{models.TITLES[model]}, {config}: {r['method']} {r['acc']:.2f} > onnxcrit "
                              f"{ours[0]['acc']:.2f}")
    total = len(groups)
    out.append(f"- onnxcrit at or above every baseline at equal counts: {'met' if not losses else 'not met'} "
               f"({total - len({l.split(':')[0] for l in losses})} of {total} model/selection groups)"
               + ("" if not losses else "; losses: " + "; ".join(losses)))
    by_row: dict[tuple, list[dict]] = {}
    for r in ranks:
        by_row.setdefault((r["model"], r["fraction"]), []).append(r)
    wins = sum(max(r["acc"] for r in g if r["method"].startswith("onnxcrit"))
               >= max(r["acc"] for r in g if not r["method"].startswith("onnxcrit")) for g in by_row.values())
    if by_row:
        out.append(f"- ranking alone (same fraction of every layer): onnxcrit's order at or above every baseline in "
                   f"{wins} of {len(by_row)} rows")
    lenet = [r for r in rows if r["model"] == "lenet5" and r["method"].startswith("onnxcrit")
             and "full strength" not in r["method"] and "failed" not in r]
    if lenet:
        best = [r for r in lenet if r["acc_before"] - r["acc"] <= 0.5 + 1e-9]
        best = max(best, key=lambda r: r["params_removed"]) if best else None
        if best:
            out.append(f"- >= 50% of LeNet-5's parameters for <= 0.5 points: "
                       f"{'met' if best['params_removed'] >= 0.5 else 'not met'} — best row within 0.5 points on "
                       f"the test set: {best['config']}, {pct(best['params_removed'])} removed, "
                       f"{best['acc_before']:.2f} -> {best['acc']:.2f}")
        else:
            out.append("- >= 50% of LeNet-5's parameters for <= 0.5 points: not met (no row within 0.5 points)")
    if "lenet5" in study:
        ten = [p for p in study["lenet5"]["images"] if p["n"] == 10]
        paper = [r for r in lenet if r["config"].startswith("paper")]
        if ten:
            wall = f"; the whole optimize call {paper[0]['wall']:.1f} s" if paper else ""
            out.append(f"- LeNet-5 scored in <= 60 s with 10 images: {'met' if ten[0]['seconds'] <= 60 else 'not met'}"
                       f" ({ten[0]['seconds']:.2f} s build + solve{wall})")
    return out


def study_tables(study: dict) -> str:
    lines = ["### 10 calibration batches (paper defaults, seeds 0-9)", "",
             "| model | params removed mean ± sd (min-max) | acc. mean ± sd (min-max) | L1, same counts: acc. "
             "mean ± sd |", "|---|---|---|---|"]
    for name, s in study.items():
        rem = np.array([b["ours"]["params_removed"] for b in s["batches"]]) * 100
        acc = np.array([b["ours"]["acc"] for b in s["batches"]])
        l1 = np.array([b["l1"]["acc"] for b in s["batches"]])
        lines.append(f"| {models.TITLES[name]} | {rem.mean():.1f} ± {rem.std():.1f} "
                     f"({rem.min():.1f}-{rem.max():.1f}) | {acc.mean():.2f} ± {acc.std():.2f} "
                     f"({acc.min():.2f}-{acc.max():.2f}) | "
                     f"{l1.mean():.2f} ± {l1.std():.2f} |")
    lines += ["", "### Calibration images (paper defaults otherwise)", "",
              "| model | images | build + solve s | params removed | acc. | L1, same counts: acc. |",
              "|---|---|---|---|---|---|"]
    for name, s in study.items():
        for p in s["images"]:
            lines.append(f"| {models.TITLES[name]} | {p['n']} | {p['seconds']:.2f} | "
                         f"{pct(p['ours']['params_removed'])} | {p['ours']['acc']:.2f} | {p['l1']['acc']:.2f} |")
    lines += ["", "### Lambda, margin and threshold sweeps (the points of the plot)", "",
              "| model | setting | params removed | acc. | L1, same counts: acc. |", "|---|---|---|---|---|"]
    sweeps = (("lambda", "lambda {:g}, thr 0.1"), ("margin", "margin {:g}, thr 0.1"),
              ("threshold", "lambda 5, thr {:g}"))
    for name, s in study.items():
        for key, setting in sweeps:
            for p in s[key]:
                lines.append(f"| {models.TITLES[name]} | {setting.format(p[key])} | "
                             f"{pct(p['ours']['params_removed'])} | {p['ours']['acc']:.2f} | {p['l1']['acc']:.2f} |")
    return "\n".join(lines)


def plot(study: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(study)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        s = study[name]
        for key, label, style in (("lambda", "onnxcrit, lambda sweep", "o-"),
                                  ("margin", "onnxcrit, margin sweep", "^-"),
                                  ("threshold", "onnxcrit, threshold sweep", "s-")):
            pts = sorted((p["ours"]["params_removed"] * 100, p["ours"]["acc"]) for p in s[key])
            ax.plot(*zip(*pts), style, label=label, markersize=4)
        for key, label, style in (("order_n10", "onnxcrit removal order, N 10 (0/1)", ":"),
                                  ("order_n50", "onnxcrit removal order, N 50 margin 2 (0/1)", "-")):
            pts = sorted((p["ours"]["params_removed"] * 100, p["ours"]["acc"]) for p in s[key])
            ax.plot(*zip(*pts), style, color="tab:red", label=label, linewidth=1.2)
        same = sorted((p["l1"]["params_removed"] * 100, p["l1"]["acc"]) for k in ("lambda", "margin", "threshold")
                      for p in s[k])
        ax.plot(*zip(*same), "x", color="grey", label="L1, same per-layer counts")
        curve = sorted((p["l1"]["params_removed"] * 100, p["l1"]["acc"]) for p in s["l1_curve"])
        ax.plot(*zip(*curve), "--", color="black", label="L1, uniform per-layer fraction")
        ax.set_title(models.TITLES[name], fontsize=10)
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower right", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.suite", description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(models.MODELS))
    ap.add_argument("--no-studies", action="store_true", help="only the main comparison")
    ap.add_argument("--out-dir", default=RESULTS)
    args = ap.parse_args(argv)
    names = args.models.split(",")
    clock = time.perf_counter()
    from . import tp_importance

    tp_ok, tp_version = tp_importance.available()
    rows, ranks, study = [], [], {}
    for name in names:
        case = models.load_case(name)
        ev = Evaluator(case)
        data_free = {n: methods.measured_criterion(n, case.path) for n in ("L1", "L2")}
        if tp_ok:
            data_free["Torch-Pruning"] = methods.measured_criterion("Torch-Pruning", case.path)
        rows += compare(case, ev, data_free)
        ranks += ranking(case, ev, data_free)
        print(f"{name}: comparison done at {time.perf_counter() - clock:.0f} s", file=sys.stderr)
        if not args.no_studies:
            study[name] = studies(case, ev)
            print(f"{name}: studies done at {time.perf_counter() - clock:.0f} s", file=sys.stderr)
    os.makedirs(args.out_dir, exist_ok=True)
    png = os.path.join(args.out_dir, "bench_suite_pareto.png")
    if study:
        plot(study, png)
    tp_note = (f"Torch-Pruning {tp_version} (`GroupMagnitudeImportance` at its defaults: p 2, mean over the "
               f"group, normalised by the layer mean)" if tp_ok else f"Torch-Pruning not installed ({tp_version}): "
               f"its rows are left out")
    text = [
        "Protocol: benchmarks/suite.py (docstring). MNIST models trained on 55,000 training images; accuracy "
        "budgets met on the other 5,000 (validation, shown as 'val.'); every accuracy below on the 10,000 test "
        "images (digits: 450 held-out images, which also serve as validation). Calibration images from the "
        f"first {POOL:,} training images, balanced and correctly classified (seed 0). No fine-tuning anywhere. "
        "onnxcrit: LP relaxation by HiGHS, hinge loss, eps 1e-5; baselines keep onnxcrit's per-layer counts and "
        f"deploy 0/1. {tp_note}. Accuracy and agreement from onnxruntime on the rewritten files; parameters are "
        "the files' weight tensors.", "", main_table(rows), "", "Targets:", "", *verdicts(rows, ranks, study), "",
        "### Ranking alone: every criterion keeps the same fraction of every layer", "",
        "Units deployed 0/1 for every method; onnxcrit's order is the one its budget search uses (score, ties by "
        "magnitude). Best per row in bold.", "", ranking_table(ranks), ""]
    if study:
        text += [study_tables(study), "", "![accuracy against parameters removed](bench_suite_pareto.png)", ""]
    subset = "" if args.models == ",".join(models.MODELS) else f" --models {args.models}"
    text.append(f"Total {time.perf_counter() - clock:.0f} s on {os.cpu_count()} cores "
                f"({platform.processor() or platform.machine()}). Command: `python -m benchmarks.suite{subset}"
                f"{' --no-studies' if args.no_studies else ''}`")
    summary = ["Test accuracy (%) at onnxcrit's per-layer kept counts, no fine-tuning; best per row in bold. Full "
               "table with agreement, scoring time and memory: benchmarks/results/bench_suite.md.", "",
               summary_table(rows), "", *verdicts(rows, ranks, study), ""]
    publish(os.path.join(args.out_dir, "bench_suite_summary.md"), "\n".join(summary), echo=False)
    with open(os.path.join(args.out_dir, "bench_suite.json"), "w") as f:
        json.dump({"rows": rows, "ranking": ranks, "studies": study}, f, indent=1, sort_keys=True, default=_jsonable)
    publish(os.path.join(args.out_dir, "bench_suite.md"), "\n".join(text) + "\n")
    return 0


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(type(value))


if __name__ == "__main__":
    sys.exit(main())
