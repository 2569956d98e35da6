"""Human-readable tables (rich) and the JSON report."""
from __future__ import annotations

import json
from typing import Any

import onnx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .ir import KINDS, Network
from .rounding import SLOWER  # below this speed-up the written model counts as slower (noise)


def _shape(dims) -> str:
    return "[" + ", ".join(dims) + "]"


def _value_shape(vi: onnx.ValueInfoProto) -> str:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return "?"
    return _shape([str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim])


def _elem(vi: onnx.ValueInfoProto) -> str:
    try:
        return onnx.TensorProto.DataType.Name(vi.type.tensor_type.elem_type).lower()
    except ValueError:
        return "?"


def layer_rows(net: Network) -> list[dict[str, Any]]:
    """One row per IR layer: name, kind, shapes and, for linear layers, units, parameters and MACs."""
    rows = []
    for layer in net.layers:
        row = {"name": layer.name, "kind": layer.kind, "in_shape": list(layer.in_shape),
               "out_shape": list(layer.out_shape)}
        if KINDS[layer.kind].linear:
            row.update(units_in=int(layer.in_shape[0]), units_out=layer.units, params=layer.params,
                       macs=layer.macs)
        rows.append(row)
    return rows


def inspect_table(model: onnx.ModelProto, net: Network, path: str, console: Console) -> None:
    """Print what `onnxcrit inspect` shows."""
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    producer = f"{model.producer_name} {model.producer_version}".strip() or "-"
    console.print(f"[bold]{escape(path)}[/bold]")
    console.print(escape(f"  opset: {opsets}   IR version: {model.ir_version}   producer: {producer}"))
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in inits:
            console.print(escape(f"  input  {vi.name}: {_elem(vi)} {_value_shape(vi)}"))
    for vi in model.graph.output:
        console.print(escape(f"  output {vi.name}: {_elem(vi)} {_value_shape(vi)}"))
    table = Table(title="recognised layers", title_justify="left")
    for col, just in (("#", "right"), ("name", "left"), ("kind", "left"), ("units in -> out", "right"),
                      ("shape out", "left"), ("params", "right"), ("MACs/sample", "right")):
        table.add_column(col, justify=just)
    scored = pruned_layers(net)
    for i, row in enumerate(layer_rows(net)):
        units = f"{row['units_in']} -> {row['units_out']}" if "units_out" in row else ""
        kind = row["kind"] + (" *" if i in scored else "")
        table.add_row(str(i), escape(row["name"]), kind, units, _shape(map(str, row["out_shape"])),
                      f"{row['params']:,}" if "params" in row else "", f"{row['macs']:,}" if "macs" in row else "")
    table.add_row("", "total", "", "", "", f"{net.params:,}", f"{net.macs:,}", style="bold")
    console.print(table)
    tail = " -> ".join(net.tail_ops) if net.tail_ops else "none"
    console.print(escape(f"  logits: '{net.logits_name}' ({net.num_classes} classes); tail kept as is: {tail}"))
    console.print("  * = prunable (scored) layer")
    for g in group_rows(net):
        if len(g["producers"]) + len(g["coupled"]) > 1:
            with_ = ", ".join(f"'{n}'" for n in g["producers"][1:] + g["coupled"])
            console.print(escape(f"  coupled: the {g['units']} units of '{g['key']}' go with {with_}"))
        if g["frozen"]:
            console.print(escape(f"  kept whole: the {g['units']} units of '{g['key']}' ({g['frozen']})"))


def pruned_layers(net: Network) -> set[int]:
    """Positions of the layers that lose units when their groups are pruned (producers and coupled convs)."""
    return {p for g in net.deps.prunable() for p in [*g.producers, *g.coupled]}


def group_rows(net: Network) -> list[dict[str, Any]]:
    """Every channel group: its key layer, unit count, producers and coupled convs (layer names), and why it is
    kept whole (None when prunable)."""
    name = lambda p: net.layers[p].name  # noqa: E731
    return [{"key": name(g.key), "units": g.units, "producers": [name(p) for p in sorted(g.producers)],
             "coupled": [name(p) for p in sorted(g.coupled)], "frozen": g.frozen} for g in net.groups]


def model_summary(model: onnx.ModelProto, net: Network) -> dict[str, Any]:
    """One model in a few numbers: opset, producer, declared input, layers, prunable units, parameters (the
    file's tensors the linear layers own), MACs per sample."""
    from . import measure

    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    inits = {i.name for i in model.graph.initializer}
    declared = next((vi for vi in model.graph.input if vi.name == net.input_name), None)
    if declared is None:
        declared = next(vi for vi in model.graph.input if vi.name not in inits)
    totals = measure.totals(measure.layer_table(net, model))
    return {"opset": default[0] if default else None,
            "producer": f"{model.producer_name} {model.producer_version}".strip() or None,
            "input": f"{_elem(declared)} {_value_shape(declared)}",
            "layers": len(net.linear_indices()), "prunable_layers": len(net.scored_indices()),
            "prunable_units": int(sum(net.layers[i].units for i in net.scored_indices())),
            "params": totals["params"], "macs": totals["macs"]}


def inspect_rows(models: list[tuple[str, onnx.ModelProto, Network]], console: Console) -> None:
    """What `onnxcrit inspect A B ...` prints: one row per model."""
    table = Table(title_justify="left")
    table.add_column("file", overflow="fold")
    for col in ("opset", "producer", "input shape", "layers", "units", "params", "MACs/sample"):
        table.add_column(col, justify="left" if col in ("producer", "input shape") else "right", no_wrap=True)
    for path, model, net in models:
        row = model_summary(model, net)
        table.add_row(escape(path), _num(row["opset"], "{}"), escape(row["producer"] or "-"),
                      escape(row["input"].split(" ", 1)[-1]), str(row["layers"]), f"{row['prunable_units']:,}",
                      f"{row['params']:,}", f"{row['macs']:,}")
    console.print(table)
    console.print("  layers: dense + conv; units: those of the prunable channel groups; params: elements of "
                  "their tensors in the file", markup=False, soft_wrap=True)


def console(stderr: bool = False, quiet: bool = False) -> Console:
    """A console that keeps tables readable when the output is a file or a pipe (rich would use 80 columns)."""
    probe = Console(stderr=stderr)
    width = None if probe.is_terminal else 120
    return Console(stderr=stderr, width=width, highlight=False, quiet=quiet)


def dumps(report: dict[str, Any]) -> str:
    """The JSON report with sorted keys, so equal runs give equal bytes."""
    return json.dumps(report, indent=2, sort_keys=True) + "\n"


def plot(path: str, layer_names: list[str], scores: list, kept: list[int], totals: list[int]) -> None:
    """PNG: score distribution per scored layer (left) and units kept vs removed per layer (right).

    Needs the `plot` extra (matplotlib); raises InputError with the install hint when it is missing.
    """
    from .errors import InputError

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'onnxcrit[plot]'") from None
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    positions = np.arange(len(layer_names))
    for i, s in enumerate(scores):
        jitter = np.random.default_rng(i).uniform(-0.18, 0.18, len(s))  # seeded: same picture every run
        left.scatter(np.full(len(s), i) + jitter, s, s=8, alpha=0.6)
    left.set_xticks(positions, layer_names, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("importance score")
    left.set_ylim(-0.05, 1.05)
    left.set_title("scores per layer")
    removed = [t - k for k, t in zip(kept, totals)]
    right.bar(positions, kept, label="kept", color="#3b7dd8")
    right.bar(positions, removed, bottom=kept, label="removed", color="#d9d9d9")
    right.set_xticks(positions, layer_names, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("units")
    right.set_title("units kept vs removed")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _kept(before, after) -> str:
    """'kept 57.1%, removed 42.9%' of a before -> after count."""
    if not before:
        return ""
    return f"kept {after / before:.1%}, removed {1 - after / before:.1%}"


def _num(value, fmt="{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" + ("" if count == 1 else "s")


def selection_text(report: dict) -> str:
    """In words, what the selection did: the rule, its parameter, what it removed and why it stopped there."""
    sel, options = report["selection"], report.get("options", {})
    removed, scored = sel.get("units_removed"), sel.get("units_scored")
    if removed is None or scored is None:  # a report from before these keys: count from the layers
        layers = [layer for layer in report["layers"] if layer["scored"]]
        scored = sum(layer["units_before"] for layer in layers)
        removed = scored - sum(layer["units_after"] for layer in layers)
    default = sel.get("by_default", False)
    rule = sel["rule"]
    if rule == "accuracy budget":
        budget = options.get("max_accuracy_drop")
        where = (f"{report.get('accuracy_samples', '?'):,} evaluation images" if report.get("accuracy_data") ==
                 "evaluation" else "the evaluation data")
        confirmation = sel.get("confirmation")
        if confirmation and confirmation.get("confirm_samples"):
            where = (f"{confirmation['choose_samples']:,} of the {report.get('accuracy_samples', '?'):,} evaluation "
                     f"images (the other {confirmation['confirm_samples']:,} check it)")
        before = report.get("accuracy_before")
        after = (report.get("finetune") or {}).get("accuracy_before", report.get("accuracy_after"))
        accuracy = f" ({before:.2f}% -> {after:.2f}%)" if before is not None and after is not None else ""
        if confirmation and confirmation.get("confirm_samples"):
            accuracy = ""  # measured on all the evaluation images, not on the part the budget was met on
        measured = sum(len(a.get("tried", [])) for a in sel.get("attempts", []))
        text = (f"accuracy budget {_points(budget)}{' (the default with --eval-data)' if default else ''} on "
                f"{where}: removed the {removed:,} lowest-scored units (of {scored:,}) while accuracy stayed within "
                f"budget{accuracy}; {_plural(measured, 'candidate')} measured")
        attempts = sel.get("attempts", [])
        if options.get("search"):
            text += (f"; --search solved {_plural(len(attempts), 'setting')} and kept {options.get('num_samples')} "
                     f"calibration images, margin {options.get('margin'):g}")
        elif len(attempts) > 1:
            text += (f"; solved {len(attempts)} times, the margin widened to {options.get('margin'):g} until a "
                     f"removal met the budget")
        return text
    if rule == "parameter budget":
        fraction = options.get("target_params")
        return (f"parameter budget {fraction:.0%}: removed the {removed:,} lowest-scored units (of {scored:,}) until "
                f"at most {fraction:.0%} of the parameters remained (kept "
                f"{report['params_after'] / report['params_before']:.1%})")
    if rule == "MAC budget":
        fraction = options.get("target_macs")
        return (f"MAC budget {fraction:.0%}: removed the {removed:,} lowest-scored units (of {scored:,}) until at "
                f"most {fraction:.0%} of the multiply-accumulates remained (kept "
                f"{report['macs_after'] / report['macs_before']:.1%})")
    if rule == "mean score":
        return (f"mean-score rule: units scoring below their layer's mean score removed ({removed:,} of "
                f"{scored:,} units)")
    why = " (the paper's rule, the default without --eval-data)" if default else ""
    return (f"threshold rule{why}: units scoring below {sel['threshold']:g} removed ({removed:,} of {scored:,} "
            f"units)")


RECONSTRUCTIONS = {"none": "none", "bias": "the next layers' biases refitted",
                   "scale": "one least-squares scale per kept unit, and the biases",
                   "lsq": "the next layers' weights and biases refitted by ridge least squares",
                   "merge": "each removed unit merged into its most similar kept unit (no data)"}


def reconstruction_text(rec: dict) -> str:
    """report["selection"]["reconstruct"] in words: what was refitted, on how many images, what auto compared."""
    applied = rec.get("applied", rec["method"])
    text = f"{applied}: {RECONSTRUCTIONS.get(applied, applied)}"
    if applied not in ("none", "merge") and rec.get("images"):
        text += f", on {rec['images']:,} images of --data"
    if rec["method"] == "auto" and rec.get("accuracy_by_method"):
        text += "; auto, the most accurate of " + ", ".join(f"{m} {a:.2f}%" for m, a in
                                                             rec["accuracy_by_method"].items())
    return text


def calibration_warning(report: dict) -> str | None:
    """The warning line for accuracy measured on the data the MIP was solved on (no --eval-data), else None."""
    if report.get("accuracy_data") != "calibration" or report.get("accuracy_before") is None:
        return None
    count = report.get("accuracy_samples")
    images = f"{count:,} calibration images" if count is not None else "calibration images"
    used = len((report.get("calibration") or {}).get("indices", []))
    of_them = f" (it used {used} of them)" if used and count is not None and used < count else ""
    return (f"warning: no --eval-data: accuracy below is measured on the {images} the MIP was solved on{of_them}, "
            f"which flatters it; give held-out data with --eval-data")


def confirmation_warning(report: dict) -> str | None:
    """The warning line when the evaluation data were too small to confirm the accuracy budget, else None."""
    record = (report.get("selection") or {}).get("confirmation")
    if not record or record.get("confirmed"):
        return None
    if not record.get("too_small"):  # confirmed, then changed by the conv rounding (confirm.Confirmer.recheck)
        lo, hi = record["interval"]
        return (f"warning: the written model is not confirmed: with conv channels rounded back in it lost "
                f"{record['drop_on_confirm']:.2f} points on the {record['confirm_samples']:,} confirmation images, "
                f"{record['confidence']:.0%} interval [{lo:.2f}, {hi:.2f}], beyond the {record['budget']:g}-point "
                f"budget; --round-to 1 writes the confirmed selection")
    needed = record.get("images_needed")
    more = f"give {needed:,}+ evaluation images or a larger budget" if needed else "give a larger budget"
    if not record.get("confirm_samples"):
        return (f"warning: the {record['choose_samples']:,} evaluation images are too few to promise the "
                f"{record['budget']:g}-point budget on new data at {record['confidence']:.0%}; it was met on them "
                f"only; {more}")
    return (f"warning: the evaluation data are too small to promise the {record['budget']:g}-point budget on new "
            f"data: {record['confirm_samples']:,} confirmation images give a {record['confidence']:.0%} interval of "
            f"[{record['interval'][0]:.2f}, {record['interval'][1]:.2f}] points for the drop; the removal was chosen "
            f"on the other {record['choose_samples']:,} and is not confirmed; {more}")


def optimize_table(report: dict, console: Console, verbose: bool = False) -> None:
    """The before/after table `onnxcrit optimize` prints, then one line per fact, each saying what it counts."""
    table = Table(title="onnxcrit: before -> after", title_justify="left")
    for col, just in (("layer", "left"), ("kind", "left"), ("units", "right"), ("params", "right"),
                      ("MACs", "right")):
        table.add_column(col, justify=just)
    for layer in report["layers"]:
        table.add_row(escape(layer["name"]), layer["kind"] + (" *" if layer["scored"] else ""),
                      f"{layer['units_before']} -> {layer['units_after']}",
                      f"{layer['params_before']:,} -> {layer['params_after']:,}",
                      f"{layer['macs_before']:,} -> {layer['macs_after']:,}")
    table.add_row("total", "", "", f"{report['params_before']:,} -> {report['params_after']:,}",
                  f"{report['macs_before']:,} -> {report['macs_after']:,}", style="bold")
    console.print(table)
    console.print("  * = prunable (scored) layer; MACs = multiply-accumulates per sample", markup=False)
    lines = [("parameters", f"{report['params_before']:,} -> {report['params_after']:,} "
                            f"({_kept(report['params_before'], report['params_after'])})"),
             ("MACs/sample", f"{report['macs_before']:,} -> {report['macs_after']:,} "
                             f"({_kept(report['macs_before'], report['macs_after'])})"),
             ("file size", f"{report['file_size_before']:,} -> {report['file_size_after']:,} bytes "
                           f"({_kept(report['file_size_before'], report['file_size_after'])})")]
    latency = report.get("latency") or {}
    batches = sorted((int(key.split("_")[1]), lat) for key, lat in latency.items() if key.startswith("batch_"))
    for batch, lat in batches:
        speedup = lat["before_ms"] / max(lat["after_ms"], 1e-9)
        lines.append((f"latency b{batch}", f"{lat['before_ms']:.3f} -> {lat['after_ms']:.3f} ms (speed-up "
                                           f"x{speedup:.2f}{', i.e. slower' if speedup < SLOWER else ''}; onnxruntime, "
                                           "1 thread, median)"))
    round_to, added = report["selection"].get("round_to", 1), report["selection"].get("units_added", 0)
    what = (f"kept channels up to multiples of {round_to} ({added} added back)" if round_to != 1 else "none")
    if latency.get("round_to_mode") == "auto":
        tried = ", ".join(str(c["round_to"]) for c in latency["candidates"])
        lines.append(("conv rounding", f"{what}: the fastest of --round-to {tried} here"))
    elif round_to != 1:
        lines.append(("conv rounding", what))
    if report.get("accuracy_before") is not None:
        data = report.get("accuracy_data", "evaluation")
        count = report.get("accuracy_samples")
        lines.append((f"accuracy ({data} data)", f"{report['accuracy_before']:.2f}% -> {report['accuracy_after']:.2f}%"
                      + (f" on {count:,} images" if count is not None else "")
                      + (" (after fine-tuning)" if "finetune" in report and data == "evaluation" else "")))
    count = report.get("agreement_samples")
    inputs = f"the {count:,} inputs" if count is not None else "the inputs"
    inputs += (" (calibration and evaluation data)" if report.get("accuracy_data") == "evaluation" else
               " (calibration data)")
    lines.append(("agreement", f"{report['agreement']:.2f}% of {inputs} get the same predicted class as from "
                               f"the original model"))
    solver = report["solver"]
    gap = solver.get("gap")
    lines.append(("solver", f"{solver['status']} in {solver['seconds']:.1f} s, gap {_num(gap, '{:.2%}')}, "
                            f"{solver['variables']:,} variables, {solver['binaries']:,} binaries, "
                            f"{solver['constraints']:,} constraints"))
    sel = report["selection"]
    lines.append(("selection", selection_text(report)))
    if (sel.get("reconstruct") or {}).get("method", "none") != "none":
        lines.append(("reconstruction", reconstruction_text(sel["reconstruct"])))
    if sel.get("confirmation"):
        lines.append(("confirmation", sel["confirmation"]["message"]))
    used = len(report.get("calibration", {}).get("indices", []))
    lines.append(("never active", f"{report['dead_units_removed']} of the removed units never fired on the "
                                  f"{used} calibration images the MIP used"))
    if report.get("output"):
        lines.append(("written", report["output"]))
    if verbose:
        lines.append(("logit change", f"largest {report['max_abs_logit_diff']:.3g}, mean "
                                      f"{report.get('mean_abs_logit_diff', float('nan')):.3g}: how far any logit of "
                                      f"the pruned model moved from the original's, over the same inputs"))
        cal = report["calibration"]
        lines.append(("calibration", f"images {cal['indices']} of --data"))
        lines += [("  skipped", reason) for reason in cal.get("skipped", [])]
        lines += [("note", note) for note in sel.get("notes", [])]
        attempts = sel.get("attempts", [])
        options = report.get("options", {})
        for k, attempt in enumerate(attempts, 1):
            tried = attempt.get("tried", [])
            what = f"{_plural(len(tried), 'candidate')} measured" if tried and "removed_units" in tried[0] else ""
            used = (len(attempts) > 1 and attempt.get("num_samples") == options.get("num_samples")
                    and attempt.get("margin") == options.get("margin"))
            lines.append((f"solve {k}", f"{attempt.get('num_samples', '?')} images, margin "
                                        f"{attempt.get('margin', float('nan')):g}, lambda {attempt['lambda']:g}"
                                        + (f": {what}" if what else "") + ("  <- selected" if used else "")))
    _print_lines(console, lines)


def _print_lines(console: Console, lines: list[tuple[str, str]]) -> None:
    """'label  text' lines, the texts aligned and wrapped under themselves to the console's width."""
    import textwrap

    width = max(len(label) for label, _ in lines) + 2
    for label, text in lines:
        wrapped = textwrap.fill(text, width=max(console.width, width + 40), initial_indent=f"{label:<{width}}",
                                subsequent_indent=" " * width, break_long_words=False, break_on_hyphens=False)
        console.print(wrapped, markup=False, highlight=False)


def evaluate_rows(rows: list[dict], data: str | None, console: Console) -> None:
    """What `onnxcrit evaluate` prints: one row per model, then what the columns measured."""
    has = {key for row in rows for key in row}
    table = Table(title_justify="left")
    table.add_column("file", overflow="fold")
    columns = ["params", "MACs/sample"] + (["accuracy"] if "accuracy" in has else []) + \
        (["agreement"] if len(rows) > 1 and "samples" in has else [])
    batches = sorted({b for row in rows for b in (row.get("latency_ms") or {})}, key=lambda b: int(b.split("_")[-1]))
    columns += [f"latency {b.replace('batch_', 'b')}" for b in batches]
    for col in columns:
        table.add_column(col, justify="right", no_wrap=True)
    for k, row in enumerate(rows):
        cells = [f"{row['params']:,}", f"{row['macs']:,}"]
        if "accuracy" in has:
            cells.append(_num(row.get("accuracy"), "{:.2f}%"))
        if "agreement" in columns:
            cells.append("(reference)" if k == 0 else _num(row.get("agreement"), "{:.2f}%"))
        cells += [_num((row.get("latency_ms") or {}).get(b), "{:.3f} ms") for b in batches]
        table.add_row(escape(row["model"]), *cells)
    console.print(table)
    notes = []
    samples = next((row["samples"] for row in rows if "samples" in row), None)
    if data is None:
        notes.append("no --data: no accuracy or agreement")
    else:
        if "accuracy" in has:
            notes.append(f"accuracy: top-1 on the {samples:,} labelled images of {data}")
        else:
            notes.append(f"{data} has no labels (y): no accuracy")
        if "agreement" in columns:
            notes.append(f"agreement: share of those {samples:,} inputs whose predicted class is the first model's")
    if batches:
        notes.append("latency: onnxruntime, 1 thread, median of random batches of the model's input shape")
    for note in notes:
        console.print(f"  {note}", markup=False, soft_wrap=True)
