"""Errors a user can cause. Each carries a one-line message; the CLI maps them to exit codes."""


class OnnxcritError(Exception):
    """Base class: a problem to report in one line, without a traceback."""

    exit_code = 1


class InputError(OnnxcritError):
    """Bad input: unreadable or unsupported model, bad data file, nonsense option (exit code 2)."""

    exit_code = 2


class UnsupportedModelError(InputError):
    """The model is valid ONNX but not a feed-forward ReLU chain onnxcrit can optimise."""


class ResourceError(InputError):
    """The run would not fit (or did not fit) in the memory: a MIP too large for the machine (exit code 2)."""


class SolveError(OnnxcritError):
    """The solver found no usable answer (infeasible, or nothing by the deadline) (exit code 1)."""


class ValidationError(OnnxcritError):
    """The rewritten model failed a check; nothing was written (exit code 1)."""


class BudgetError(OnnxcritError):
    """No result meets the requested budget (exit code 1)."""


def naming(exc: OnnxcritError, subject: str) -> OnnxcritError:
    """The same error with its message starting with `subject` (e.g. a file) unless it names it already."""
    if subject in str(exc):
        return exc
    named = type(exc)(f"{subject}: {exc}")
    named.exit_code = exc.exit_code
    return named
