"""The `onnxcrit` command: parsing and printing only; the work happens in `onnxcrit.api`."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import click
from rich.console import Console

from .errors import InputError, OnnxcritError


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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="Calibration data: .npz with arrays x and y.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: MODEL.pruned.onnx].")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Held-out .npz (x, y) for accuracy and budgets.")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG of scores and kept units.")
@click.option("--time-limit", type=float, default=300.0, show_default=True, help="Solver deadline in seconds.")
@click.option("--threshold", type=float, help="Remove units scoring below this (paper: 0.1).")
@click.option("--mean-threshold", is_flag=True, help="Use each layer's mean score as its threshold.")
@click.option("--lam", type=float, default=5.0, show_default=True, help="Weight of the loss term (larger prunes "
              "less; with the hinge loss nothing changes above about 0.5, use --margin).")
@click.option("--eps", type=float, default=1e-5, show_default=True, help="Radius of the input box around each image.")
@click.option("--num-samples", type=int, default=10, show_default=True, help="Calibration images (balanced by class).")
@click.option("--relax/--mip", default=True, show_default=True,
              help="Solve the LP relaxation (HiGHS interior point; gave the MIP's scores in every benchmark) or "
              "the MIP with its binaries (CBC).")
@click.option("--solver", type=click.Choice(["auto", "cbc", "highs"]), default="auto", show_default=True)
@click.option("--loss", type=click.Choice(["hinge", "lse"]), default="hinge", show_default=True,
              help="Linear surrogate of the loss: multiclass hinge, or tangent planes of log-sum-exp.")
@click.option("--margin", type=float, default=1.0, show_default=True, help="Hinge margin (larger prunes less).")
@click.option("--sparsity", type=click.Choice(["mean", "paper"]), default="mean", show_default=True,
              help="Per-layer mean scores, or the paper code's -2 shift over the K-1 largest layers.")
@click.option("--max-accuracy-drop", type=float, help="Accuracy budget in points on --eval-data [default with "
              "--eval-data: 1.0].")
@click.option("--target-params", type=float, help="Keep at most this fraction of the parameters (0-1].")
@click.option("--search", is_flag=True, help="Under the accuracy budget, try 10/50/100 calibration images x margin "
              "1/2/4 and keep the setting that removes the most (--time-limit covers all nine solves).")
@click.option("--compensate-bias", is_flag=True, help="Fold removed units' mean activation into the next bias.")
@click.option("--rescale/--no-rescale", default=None, help="Deploy kept units at their score (as the MIP modelled) or "
              "at full strength [default: the more accurate on --eval-data under an accuracy budget, else rescale].")
@click.option("--no-latency", is_flag=True, help="Measure no latency (and round only as --round-to says: auto "
              "means no rounding then).")
@click.option("--round-to", default="auto", show_default=True, metavar="auto|K",
              help="Round every conv layer's kept channels up to a multiple of K (at most its count), adding back "
              "the best removed ones: onnxruntime's blocked convolution layout runs multiples of 8 or 16 fastest. "
              "auto MEASURES: it rewrites the model for K = 1, 4, 8, 16, times each against the original with "
              "onnxruntime on this machine (about a second for a small CNN) and writes the fastest within the "
              "budget, so its output depends on the machine; give K to pin it. Dense layers are not rounded.")
@click.option("--latency-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="The second batch size latency is timed at (besides 1).")
@click.option("--finetune-data", type=click.Path(path_type=Path), help="Fine-tune the pruned model on this .npz "
              "(needs the finetune extra).")
@click.option("--finetune-epochs", type=int, default=3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["auto", "full", "decoupled"]), default="auto", show_default=True,
              help="One MIP for the whole network, one per block on auxiliary heads (parallel), or by problem size.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel block solves in decoupled mode "
              "[default: the number of cores].")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors and warnings.")
@click.option("-v", "--verbose", is_flag=True, help="Also print calibration, selection and solver details.")
def optimize(model, data, output, eval_data, report_path, plot_path, time_limit, threshold, mean_threshold, lam,
             eps, num_samples, relax, solver, loss, margin, sparsity, max_accuracy_drop, target_params, search,
             compensate_bias, rescale, no_latency, round_to, latency_batch, finetune_data, finetune_epochs, seed,
             mode, workers, quiet, verbose):
    """Prune MODEL: score units with the MIP, remove the unimportant ones, validate, write the smaller model."""
    from . import api, rounding
    from .output import has_external_data, write_model
    from .report import console, dumps, optimize_table, plot

    round_to = rounding.parse_round_to(round_to)
    if quiet and verbose:
        raise InputError("--quiet and --verbose exclude each other")
    if threshold is not None and mean_threshold:
        raise InputError("--threshold and --mean-threshold exclude each other")
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
        result = api.optimize(model, data, eval_data=eval_data, eps=eps, lam=lam,
                              threshold=threshold, mean_threshold=mean_threshold, num_samples=num_samples,
                              relax=relax, solver=solver, loss=loss, margin=margin, sparsity=sparsity,
                              time_limit=time_limit,
                              max_accuracy_drop=max_accuracy_drop, target_params=target_params, seed=seed,
                              rescale=rescale, compensation=compensate_bias, measure_latency=not no_latency,
                              round_to=round_to, latency_batch=latency_batch, finetune_data=finetune_data,
                              finetune_epochs=finetune_epochs, mode=mode,
                              workers=workers, search=search, progress=progress)
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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, type=click.Path(path_type=Path), help=".npz with x (and y).")
@click.option("--compare", type=click.Path(path_type=Path), help="Another model to compare with (e.g. the original).")
@click.option("--no-latency", is_flag=True, help="Skip the latency measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(model, data, compare, no_latency, as_json):
    """Accuracy, agreement with another model, and latency (onnxruntime, one thread)."""
    from . import api
    from .report import console, dumps, evaluate_table

    result = api.evaluate(model, data, compare=compare, latency=not no_latency)
    if as_json:
        click.echo(dumps(result), nl=False)
    else:
        evaluate_table(result, str(model), str(compare) if compare else None, console())


def _train_options(fn):
    for decorator in reversed([
        click.option("--data", "data", required=True, type=click.Path(path_type=Path), help="Training .npz (x, y)."),
        click.option("--eval-data", type=click.Path(path_type=Path), help="Held-out .npz (x, y)."),
        click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model."),
        click.option("--epochs", type=int, default=None, help="Training epochs."),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate."),
        click.option("--batch-size", type=int, default=64, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors."),
    ]):
        fn = decorator(fn)
    return fn


def _train(kind, model, data, eval_data, output, epochs, lr, batch_size, seed, quiet, **extra):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from . import finetune as ft
    from .output import has_external_data, write_model
    from .report import console

    suffix = ".finetuned.onnx" if kind == "finetune" else ".retrained.onnx"
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


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_train_options
def finetune(model, data, eval_data, output, epochs, lr, batch_size, seed, quiet):
    """Fine-tune a (pruned) model's weights on DATA, keeping its graph (needs the finetune extra)."""
    _train("finetune", model, data, eval_data, output, 3 if epochs is None else epochs, lr, batch_size, seed, quiet)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@_train_options
@click.option("--init", "init", default="random", show_default=True,
              help="'random', or the ONNX file of the unpruned network with its initial weights.")
def retrain(model, data, eval_data, output, epochs, lr, batch_size, seed, quiet, init):
    """Re-initialise a pruned architecture and train it from scratch on DATA (the paper's cross-data-set test)."""
    init_value = init if init == "random" else Path(init)
    _train("retrain", model, data, eval_data, output, 10 if epochs is None else epochs, lr, batch_size, seed, quiet,
           init=init_value)


if __name__ == "__main__":  # pragma: no cover
    main()
