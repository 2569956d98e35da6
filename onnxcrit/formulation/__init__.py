"""The OAMIP formulation (METHOD.md sections 3-4): one builder per layer kind, all rows from arrays."""
from .milp import Milp
from .model import BUILDERS, Formulation, build_problem

__all__ = ["BUILDERS", "Formulation", "Milp", "build_problem"]
