"""The `onnxcrit` command: parsing and printing only; the work happens in `onnxcrit.api`."""
from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console

from .errors import InputError, OnnxcritError


def _fail(exc: OnnxcritError) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"onnxcrit: error: {exc}", markup=False)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """Turns onnxcrit's own errors into one line and an exit code; click's usage errors exit 2 as usual."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxcritError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            Console(stderr=True).print("onnxcrit: interrupted; nothing was written", markup=False)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="onnxcrit")
def main() -> None:
    """Prune ReLU networks in ONNX files: find critical neurons with a MIP, remove the rest, check the result."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=Path))
def inspect(model: Path) -> None:
    """Show the model's inputs, outputs and recognised layers."""
    from .frontend import load_network
    from .report import console, inspect_table

    net, proto = load_network(model)
    inspect_table(proto, net, str(model), console())


def _positive(name):
    def check(ctx, param, value):
        if value is not None and not value > 0:
            raise click.BadParameter(f"must be > 0, got {value}", param_hint=f"--{name}")
        return value
    return check


def _nonnegative(name):
    def check(ctx, param, value):
        if value is not None and not value >= 0:
            raise click.BadParameter(f"must be >= 0, got {value}", param_hint=f"--{name}")
        return value
    return check


if __name__ == "__main__":  # pragma: no cover
    main()
