"""onnxcrit: prune ReLU networks in ONNX files with the OAMIP mixed-integer program.

The public face: `optimize()` and `evaluate()`, their `Options` and `Result`, `write_model()`, and the errors.
"""
from .api import Result, evaluate, optimize
from .options import DEFAULTS, Options
from .errors import (BudgetError, InputError, OnnxcritError, ResourceError, SolveError, UnsupportedModelError,
                     ValidationError)
from .output import write_model

__all__ = ["optimize", "evaluate", "Options", "DEFAULTS", "Result", "write_model", "OnnxcritError", "InputError", "UnsupportedModelError",
           "ResourceError", "SolveError", "BudgetError", "ValidationError"]
__version__ = "0.1.0"
