"""The `onnxcrit` command: parsing and printing only; the work happens in `onnxcrit.api`."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from .errors import InputError, OnnxcritError, ResourceError, naming
from .options import DEFAULTS, LOSSES, MODES, RECONSTRUCTIONS, SPARSITY, Options


def _fail(exc: OnnxcritError, exit_code: int | None = None) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"onnxcrit: error: {exc}", markup=False)
    sys.exit(exc.exit_code if exit_code is None else exit_code)


class _Group(click.Group):
    """Turns onnxcrit's errors and click's usage errors into one line on stderr and an exit code."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            hint = f" (see 'onnxcrit {exc.ctx.info_name} --help')" if getattr(exc, "ctx", None) else ""
            _fail(InputError(exc.format_message() + hint), exit_code=exc.exit_code)
        except click.Abort:
            Console(stderr=True).print("onnxcrit: interrupted; nothing was written", markup=False)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OnnxcritError as exc:
            _fail(exc)
        except MemoryError as exc:  # outside optimize(), which says which stage it was in
            from .resources import out_of_memory_message

            _fail(ResourceError(out_of_memory_message(None, exc)))
        except KeyboardInterrupt:
            Console(stderr=True).print("onnxcrit: interrupted; nothing was written", markup=False)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="onnxcrit", help="Show the version and exit.")
def main() -> None:
    """Prune ReLU networks in ONNX files: find critical neurons with a MIP, remove the rest, check the result."""


def _load_all(paths) -> list:
    """(path, Network, ModelProto) per file, every file checked before anything is printed; an error names its
    file."""
    from .frontend import load_network

    loaded = []
    for path in paths:
        try:
            net, proto = load_network(path)
        except OnnxcritError as exc:
            raise naming(exc, str(path)) from None
        loaded.append((path, net, proto))
    return loaded


@main.command(short_help="Show a model's layers, units, params and MACs; several: a table.")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]",
                type=click.Path(dir_okay=True, path_type=Path))
def inspect(models: tuple[Path, ...]) -> None:
    """Show MODEL's opset, producer, inputs, outputs and recognised layers with units, parameters and MACs.

    With several models: one table row per model (file, opset, producer, input, layers, prunable units,
    parameters, MACs per sample).
    """
    from .report import console, inspect_rows, inspect_table

    if len(models) == 1:
        from .frontend import load_network

        net, proto = load_network(models[0])
        inspect_table(proto, net, str(models[0]), console())
        return
    inspect_rows([(str(path), proto, net) for path, net, proto in _load_all(models)], console())


class _RichProgress:
    """Shows each pipeline stage on stderr with its elapsed time (and the solve's deadline)."""

    def __init__(self, console, verbose: bool):
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console, self.verbose = console, verbose
        self.bar = Progress(SpinnerColumn(finished_text="[green]ok[/green]"), TextColumn("{task.description}"),
                            TimeElapsedColumn(), console=console, transient=False)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if exc[0] is not None:
            self.bar.live.transient = True  # on failure the error line alone is the output
        return self.bar.__exit__(*exc)

    def start(self, stage: str, deadline: float | None = None) -> None:
        label = f"{stage:<9}" + (f" (deadline {deadline:g} s)" if deadline else "")
        self.tasks[stage] = self.bar.add_task(label, total=1)

    def done(self, stage: str, detail: str = "") -> None:
        task = self.tasks.get(stage)
        if task is None:
            return
        from rich.markup import escape

        old = self.bar.tasks[task].description
        self.bar.update(task, completed=1, description=f"{old}  [dim]{escape(detail)}[/dim]" if detail else old)

    def note(self, message: str) -> None:
        self.bar.console.print(f"note: {message}", markup=False, highlight=False)


def _probe_folder(path: Path, what: str) -> None:
    """Fail before any work when `path` cannot be written: a missing or unwritable folder (root included)."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{what} {path}: folder {folder} does not exist")
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder; give a file name")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{what} {path}: folder {folder} is not writable ({exc.strerror})") from None


def _output_path(model: Path, output: Path | None) -> Path:
    out = output if output is not None else model.with_name(model.stem + ".pruned.onnx")
    if out.exists() and model.exists() and out.resolve() == model.resolve():
        raise InputError(f"{out}: refusing to write over the input model; choose another -o")
    _probe_folder(out, "output")
    return out


def _writable_file(path: Path | None, what: str) -> None:
    if path is not None:
        _probe_folder(path, what)


@main.command(short_help="Prune a model: score units by MIP, remove the rest, validate.")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="Calibration .npz (x, y): the images the MIP is solved on.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: MODEL.pruned.onnx].")
@click.option("--eval-data", type=click.Path(path_type=Path),
              help="Held-out .npz (x, y): accuracy and budgets are measured on it.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report to this file.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="Write a PNG of the scores and kept units per layer.")
@click.option("--time-limit", type=float, default=DEFAULTS.time_limit, show_default=True,
              help="Solver deadline in seconds (for all solves together).")
@click.option("--threshold", type=float, help="Remove units scoring below this (paper: 0.1).")
@click.option("--mean-threshold", is_flag=True, help="Remove units scoring below their layer's mean score.")
@click.option("--lam", type=float, default=DEFAULTS.lam, show_default=True,
              help="Weight of the loss term; no effect above ~0.5, use --margin.")
@click.option("--eps", type=float, default=DEFAULTS.eps, show_default=True,
              help="Radius of the input box around each calibration image.")
@click.option("--num-samples", type=int, default=DEFAULTS.num_samples, show_default=True,
              help="Calibration images the MIP uses (balanced by class).")
@click.option("--relax/--mip", default=DEFAULTS.relax, show_default=True,
              help="Solve the LP relaxation (HiGHS) or the MIP with binaries (CBC).")
@click.option("--solver", type=click.Choice(["auto", "cbc", "highs"]), default=DEFAULTS.solver, show_default=True,
              help="Solver; auto: HiGHS interior point for the LP, CBC for the MIP.")
@click.option("--loss", type=click.Choice(LOSSES), default=DEFAULTS.loss, show_default=True,
              help="Loss surrogate: multiclass hinge or log-sum-exp tangents.")
@click.option("--margin", type=float, default=DEFAULTS.margin, show_default=True,
              help="Hinge margin; larger keeps more units.")
@click.option("--sparsity", type=click.Choice(SPARSITY), default=DEFAULTS.sparsity, show_default=True,
              help="Sparsity term: per-layer mean score or the paper code's.")
@click.option("--max-accuracy-drop", type=float,
              help="Accuracy budget in points on --eval-data [default with it: 1.0].")
@click.option("--confirm/--no-confirm", default=DEFAULTS.confirm, show_default=True,
              help="Accuracy budget: choose on half of --eval-data, confirm on the other half.")
@click.option("--confidence", type=float, default=DEFAULTS.confidence, show_default=True,
              help="Confidence of the confirmation's interval of the accuracy drop.")
@click.option("--target-params", type=float, help="Keep at most this fraction (0-1] of the parameters.")
@click.option("--target-macs", type=float, help="Keep at most this fraction (0-1] of the MACs per sample.")
@click.option("--search", is_flag=True,
              help="With an accuracy budget: try 10/50/100 images x margin 1/2/4, keep the best.")
@click.option("--compensate-bias", is_flag=True, help="Fold removed units' mean activation into the next bias.")
@click.option("--reconstruct", type=click.Choice(RECONSTRUCTIONS), default=DEFAULTS.reconstruct,
              help="Refit the next layer after removal, for every candidate measured: bias, per-unit scales, ridge "
              "least squares of its weights, data-free merging, none, or auto (the most accurate) [default: lsq; "
              "none with --compensate-bias].")
@click.option("--rescale/--no-rescale", default=None,
              help="Kept units at their score or full strength [default: the more accurate under a budget, "
              "else score].")
@click.option("--no-latency", is_flag=True, help="Measure no latency (auto rounding then rounds nothing).")
@click.option("--round-to", default=DEFAULTS.round_to, show_default=True, metavar="auto|K",
              help="Round conv layers' kept channels up to a multiple of K (fast in onnxruntime's blocked layout). "
              "auto MEASURES K = 1, 4, 8, 16 against the original on this machine and writes the fastest within "
              "the budget, so its output depends on the machine; give K to pin it.")
@click.option("--latency-batch", type=click.IntRange(min=1), default=DEFAULTS.latency_batch, show_default=True,
              help="The second batch size latency is timed at (besides 1).")
@click.option("--finetune-data", type=click.Path(path_type=Path),
              help="Then fine-tune the pruned model on this .npz (finetune extra).")
@click.option("--finetune-epochs", type=int, default=DEFAULTS.finetune_epochs, show_default=True,
              help="Epochs of that fine-tuning.")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True,
              help="Seed of the calibration image choice (and fine-tuning).")
@click.option("--mode", type=click.Choice(MODES), default=DEFAULTS.mode, show_default=True,
              help="One MIP, one per block (decoupled), or by problem size.")
@click.option("--memory-limit", type=float, metavar="GB",
              help="Memory a full-mode MIP may take; over it --mode full is refused, auto goes decoupled "
              "[default: 80% of the free memory].")
@click.option("--workers", type=click.IntRange(min=1),
              help="Parallel block solves and budget-search candidates [default: cores in decoupled mode, "
              "1 in full mode].")
@click.option("--executor", default=DEFAULTS.executor, show_default=True, metavar="KIND",
              help="Where decoupled mode's block solves and the budget search's candidates run: threads, "
              "processes (candidates in threads), ray (local) or ray:ADDRESS (a cluster; needs the ray extra).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@click.option("-v", "--verbose", is_flag=True, help="Also print calibration, solve and logit-change details.")
def optimize(model, data, output, eval_data, report_path, plot_path, time_limit, threshold, mean_threshold, lam,
             eps, num_samples, relax, solver, loss, margin, sparsity, max_accuracy_drop, confirm, confidence,
             target_params, target_macs, search, compensate_bias, reconstruct, rescale, no_latency, round_to,
             latency_batch, finetune_data, finetune_epochs, seed, mode, memory_limit, workers, executor, quiet,
             verbose):
    """Prune MODEL: score units with the MIP, remove the unimportant ones, validate, write the smaller model."""
    from . import api, rounding
    from .output import has_external_data, write_model
    from .report import calibration_warning, confirmation_warning, console, dumps, optimize_table, plot

    opts = Options(eps=eps, lam=lam, loss=loss, margin=margin, sparsity=sparsity, num_samples=num_samples,
                   relax=relax, solver=solver, time_limit=time_limit, seed=seed, mode=mode, workers=workers,
                   executor=executor, memory_limit=memory_limit,
                   search=search, threshold=threshold, mean_threshold=mean_threshold,
                   max_accuracy_drop=max_accuracy_drop, confirm=confirm, confidence=confidence,
                   target_params=target_params, target_macs=target_macs,
                   rescale=rescale, compensation=compensate_bias, reconstruct=reconstruct, round_to=round_to,
                   measure_latency=not no_latency, latency_batch=latency_batch, finetune_epochs=finetune_epochs)
    if quiet and verbose:
        raise InputError("--quiet and --verbose exclude each other")
    out = _output_path(model, output)
    _writable_file(report_path, "report")
    _writable_file(plot_path, "plot")
    if plot_path is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise InputError("--plot needs matplotlib: pip install 'onnxcrit[plot]'") from None
    err = console(stderr=True, quiet=quiet)
    with _RichProgress(err, verbose) as progress:
        result = api.optimize(model, data, eval_data=eval_data, options=opts, finetune_data=finetune_data,
                              progress=progress)
        progress.start("write")
        try:
            written = write_model(result.model, out, external_data=True if has_external_data(model) else None,
                                  input_path=model)
        except OSError as exc:
            raise InputError(f"output {out}: cannot write ({exc.strerror or exc})") from None
        result.report["output"] = str(written)
        result.report["file_size_after"] = _disk_size(written)
        if report_path is not None:
            _write_text(report_path, dumps(result.report))
        if plot_path is not None:
            _plot(plot, result, plot_path)
        progress.done("write", str(written))
    for warning in (calibration_warning(result.report), confirmation_warning(result.report)):
        if warning is not None:
            err.print(warning, markup=False, soft_wrap=True)
    if not quiet:
        optimize_table(result.report, console(), verbose=verbose)
    latency = result.report.get("latency")
    if latency and latency["slower"]:
        Console(stderr=True, highlight=False, soft_wrap=True).print(
            f"warning: {rounding.slower_message(latency)}", markup=False)


def _disk_size(path: Path) -> int:
    from .measure import file_size

    return file_size(path)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _plot(plot, result, path: Path) -> None:
    layers = [layer for layer in result.report["layers"] if layer["scored"]]
    scores = [result.scores[k] for k in sorted(result.scores)]
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        plot(str(tmp), [l["name"] for l in layers], scores, [l["units_after"] for l in layers],
             [l["units_before"] for l in layers])
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@main.command(short_help="Size, latency and, with --data, accuracy of models, a row each.")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL...]", type=click.Path(path_type=Path))
@click.option("--data", "data", type=click.Path(path_type=Path),
              help=".npz with x (and y for accuracy); without it: size and latency only.")
@click.option("--compare", type=click.Path(path_type=Path),
              help="Another model to compare with, as if given second (e.g. the original).")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON: a list with one entry per model (one model: its dict, --compare inside).")
def evaluate(models, data, compare, no_latency, as_json):
    """Parameters, MACs, latency (onnxruntime, one thread) and, with --data, accuracy and top-1 agreement with
    the FIRST model, for every MODEL: one table row each.

    Without --data, accuracy and agreement are left out and latency runs on random inputs of the model's shape.
    """
    from . import api
    from .report import console, dumps, evaluate_rows

    paths = list(models) + ([compare] if compare is not None else [])
    rows = api.evaluate_models(paths, data, latency=not no_latency)
    if as_json:
        if len(models) == 1:  # the one-model schema of `onnxcrit.evaluate`: its dict, the other under "compare"
            result = {k: v for k, v in rows[0].items() if k != "model"}
            if compare is not None:
                result["compare"] = {k: v for k, v in rows[1].items() if k not in ("model", "samples")}
        else:
            result = rows
        click.echo(dumps(result), nl=False)
    else:
        evaluate_rows(rows, str(data) if data is not None else None, console())


_TRAINED_SUFFIX = {"finetune": ".finetuned.onnx", "retrain": ".retrained.onnx"}


def _train_options(kind: str, epochs: int):
    """The options finetune and retrain share; `epochs` is the command's default."""
    def apply(fn):
        for decorator in reversed([
            click.option("--data", "data", required=True, type=click.Path(path_type=Path),
                         help="Training .npz (x, y)."),
            click.option("--eval-data", type=click.Path(path_type=Path),
                         help="Held-out .npz (x, y): accuracy before and after."),
            click.option("-o", "--output", type=click.Path(path_type=Path),
                         help=f"Output model [default: MODEL{_TRAINED_SUFFIX[kind]}]."),
            click.option("--epochs", type=click.IntRange(min=1), default=epochs, show_default=True,
                         help="Passes over the training data."),
            click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate."),
            click.option("--batch-size", type=int, default=64, show_default=True, help="Images per training step."),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed of the shuffling (and init)."),
            click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
        ]):
            fn = decorator(fn)
        return fn
    return apply


def _train(kind, model, data, eval_data, output, epochs, lr, batch_size, seed, quiet, **extra):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import finetune as ft
    from .output import has_external_data, write_model
    from .report import console

    suffix = _TRAINED_SUFFIX[kind]
    out = _output_path(model, output if output is not None else model.with_name(model.stem + suffix))
    err = console(stderr=True, quiet=quiet)
    with Progress(TextColumn(kind), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task(kind, total=None, loss=float("nan"))

        def progress(step, steps, loss):
            bar.update(task, completed=step, total=steps, loss=loss)

        fn = ft.finetune if kind == "finetune" else ft.retrain
        try:
            result = fn(model, data, eval_data=eval_data, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                        progress=progress, **extra)
        except BaseException:
            bar.live.transient = True  # on failure the error line alone is the output
            raise
    write_model(result.model, out, external_data=True if has_external_data(model) else None, input_path=model)
    if not quiet:
        con = console()
        con.print(f"training accuracy  {result.train_accuracy_before:.2f}% -> {result.train_accuracy_after:.2f}%",
                  markup=False)
        if result.eval_accuracy_after is not None:
            con.print(f"held-out accuracy  {result.eval_accuracy_before:.2f}% -> {result.eval_accuracy_after:.2f}%",
                      markup=False)
        con.print(f"written            {out}", markup=False)


@main.command(short_help="Train a pruned model's weights on labelled data (finetune extra).")
@click.argument("model", type=click.Path(path_type=Path))
@_train_options("finetune", epochs=3)
def finetune(model, data, eval_data, output, epochs, lr, batch_size, seed, quiet):
    """Fine-tune a (pruned) model's weights on DATA, keeping its graph (needs the finetune extra)."""
    _train("finetune", model, data, eval_data, output, epochs, lr, batch_size, seed, quiet)


@main.command(short_help="Retrain a pruned architecture from scratch (cross-data test).")
@click.argument("model", type=click.Path(path_type=Path))
@_train_options("retrain", epochs=10)
@click.option("--init", "init", default="random", show_default=True,
              help="'random', or the unpruned ONNX file whose initial weights to start from.")
def retrain(model, data, eval_data, output, epochs, lr, batch_size, seed, quiet, init):
    """Re-initialise a pruned architecture and train it from scratch on DATA (the paper's cross-data-set test;
    needs the finetune extra)."""
    init_value = init if init == "random" else Path(init)
    _train("retrain", model, data, eval_data, output, epochs, lr, batch_size, seed, quiet, init=init_value)


if __name__ == "__main__":  # pragma: no cover
    main()
