"""Human-readable tables (rich) and the JSON report."""
from __future__ import annotations

import json
from typing import Any

import onnx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .ir import Network


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
        if layer.kind in ("dense", "conv"):
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
    scored = set(net.scored_indices())
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


def _ratio(before, after) -> str:
    if not before:
        return ""
    return f"{after / before:.1%}"


def _num(value, fmt="{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def optimize_table(report: dict, console: Console, verbose: bool = False) -> None:
    """The before/after table `onnxcrit optimize` prints."""
    table = Table(title="onnxcrit: before -> after", title_justify="left")
    for col, just in (("layer", "left"), ("kind", "left"), ("units", "right"), ("params", "right"),
                      ("MACs", "right")):
        table.add_column(col, justify=just)
    for layer in report["layers"]:
        table.add_row(escape(layer["name"]), layer["kind"] + (" *" if layer["scored"] else ""),
                      f"{layer['units_before']} -> {layer['units_after']}",
                      f"{layer['params_before']:,} -> {layer['params_after']:,}",
                      f"{layer['macs_before']:,} -> {layer['macs_after']:,}")
    table.add_row("total", "", "", f"{report['params_before']:,} -> {report['params_after']:,} "
                  f"({_ratio(report['params_before'], report['params_after'])})",
                  f"{report['macs_before']:,} -> {report['macs_after']:,} "
                  f"({_ratio(report['macs_before'], report['macs_after'])})", style="bold")
    console.print(table)
    lines = [f"file size      {report['file_size_before']:,} -> {report['file_size_after']:,} bytes"]
    latency = report.get("latency") or {}
    batches = sorted((int(key.split("_")[1]), lat) for key, lat in latency.items() if key.startswith("batch_"))
    for batch, lat in batches:
        lines.append(f"latency b{batch:<5} {lat['before_ms']:.3f} -> {lat['after_ms']:.3f} ms "
                     f"(speed-up x{lat['before_ms'] / max(lat['after_ms'], 1e-9):.2f})")
    round_to, added = report["selection"].get("round_to", 1), report["selection"].get("units_added", 0)
    what = (f"kept channels up to multiples of {round_to} ({added} added back)" if round_to != 1 else "none")
    if latency.get("round_to_mode") == "auto":
        tried = ", ".join(str(c["round_to"]) for c in latency["candidates"])
        lines.append(f"conv rounding  {what}: the fastest of --round-to {tried} here")
    elif round_to != 1:
        lines.append(f"conv rounding  {what}")
    if report.get("accuracy_before") is not None:
        lines.append(f"accuracy       {report['accuracy_before']:.2f}% -> {report['accuracy_after']:.2f}% "
                     f"(on {report['accuracy_data']} data)")
    lines.append(f"agreement      {report['agreement']:.2f}% top-1 with the original; max |logit diff| "
                 f"{report['max_abs_logit_diff']:.3g}")
    solver = report["solver"]
    gap = solver.get("gap")
    lines.append(f"solver         {solver['status']} in {solver['seconds']:.1f} s, gap "
                 f"{_num(gap, '{:.2%}')}, {solver['variables']:,} variables, {solver['binaries']:,} binaries, "
                 f"{solver['constraints']:,} constraints")
    sel = report["selection"]
    rule = sel["rule"] + (f" (threshold {sel['threshold']:.3g})" if sel.get("threshold") is not None else "")
    lines.append(f"selection      {rule}; {report['dead_units_removed']} never-active units among those removed")
    if report.get("output"):
        lines.append(f"written        {report['output']}")
    for line in lines:
        console.print(escape(line))
    if verbose:
        cal = report["calibration"]
        console.print(escape(f"calibration    images {cal['indices']}"))
        for reason in cal.get("skipped", []):
            console.print(escape(f"  skipped: {reason}"))
        for note in sel.get("notes", []):
            console.print(escape(f"note           {note}"))
        for attempt in sel.get("attempts", []):
            console.print(escape(f"lambda {attempt['lambda']:g}: tried {len(attempt['tried'])} thresholds"))


def evaluate_table(result: dict, name: str, other: str | None, console: Console) -> None:
    """What `onnxcrit evaluate` prints."""
    table = Table(title_justify="left")
    table.add_column("")
    table.add_column(escape(name), justify="right")
    cmp = result.get("compare")
    if cmp is not None:
        table.add_column(escape(other or "other"), justify="right")
    rows = [("samples", f"{result['samples']:,}", f"{result['samples']:,}"),
            ("accuracy", _num(result.get("accuracy"), "{:.2f}%"), _num((cmp or {}).get("accuracy"), "{:.2f}%")),
            ("params", f"{result['params']:,}", _num((cmp or {}).get("params"))),
            ("MACs/sample", f"{result['macs']:,}", _num((cmp or {}).get("macs")))]
    for batch, ms in sorted((result.get("latency_ms") or {}).items()):
        rows.append((f"latency {batch.replace('_', ' ')}", f"{ms:.3f} ms",
                     _num(((cmp or {}).get("latency_ms") or {}).get(batch), "{:.3f} ms")))
    for label, mine, theirs in rows:
        table.add_row(label, mine, *([theirs] if cmp is not None else []))
    console.print(table)
    if cmp is not None:
        console.print(escape(f"top-1 agreement {cmp['agreement']:.2f}%, max |logit diff| {cmp['max_abs_logit_diff']:.3g}"))
