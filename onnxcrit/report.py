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
