"""Every option of `optimize`, with its default and its check, in one place.

The Python API and the CLI both build an `Options` (the CLI takes its defaults and choices from here), and the
solver stage checks its own arguments through the same `Options`, so a value is accepted or refused the same
way wherever it comes in. A bad value is an `InputError` with one line (exit code 2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from .errors import InputError
from .formulation.loss import LOSSES
from .formulation.model import SPARSITY
from .reconstruct import CHOICES as RECONSTRUCTIONS
from .solve import SOLVERS

MODES = ("auto", "full", "decoupled")
DEFAULT_RECONSTRUCT = "lsq"  # what reconstruct=None means where a reconstruction applies (measured: docs/method.md)


@dataclass(frozen=True)
class Options:
    """The settings of one `optimize` run (see the README's options table for what each does)."""

    # the MIP
    eps: float = 1e-5  # radius of the input box around each calibration image
    lam: float = 5.0  # weight of the loss term
    loss: str = "hinge"
    margin: float = 1.0
    sparsity: str = "mean"
    num_samples: int = 10  # calibration images the MIP is solved on
    relax: bool = True  # LP relaxation (HiGHS interior point) instead of the MIP with binaries
    solver: str = "auto"
    time_limit: float = 300.0  # seconds, all solves together
    seed: int = 0
    mode: str = "auto"  # full, decoupled (one MIP per block) or auto (by problem size)
    workers: int | None = None  # decoupled mode's parallel block solves; None: the number of cores
    executor: str = "threads"  # block solves and budget-search candidates: threads, processes, ray or ray:ADDRESS
    memory_limit: float | None = None  # GB a full-mode MIP may take; None: 80% of the memory available (resources.py)
    search: bool = False  # under an accuracy budget: try api.SEARCH_GRID, keep the best setting
    # the selection
    threshold: float | None = None
    mean_threshold: bool = False
    max_accuracy_drop: float | None = None  # points on the evaluation data
    confirm: bool = True  # an accuracy budget: chosen on half the evaluation data, confirmed on the other half
    confidence: float = 0.9  # of the confirmation's interval (two-sided; confirm.py)
    target_params: float | None = None  # fraction of the parameters to keep at most
    target_macs: float | None = None  # fraction of the MACs per sample to keep at most
    rescale: bool | None = None  # kept units at their score (True), full strength (False), or the better
    compensation: bool = False  # fold removed units' mean activation into the next bias
    # refit the next layers after removal (reconstruct.py), for every candidate measured; None (the default):
    # DEFAULT_RECONSTRUCT, or none with --compensate-bias (docs/method.md)
    reconstruct: str | None = None
    # deployment
    round_to: int | str = "auto"  # conv channels kept in multiples of this; auto: the fastest measured
    measure_latency: bool = True
    latency_batch: int = 64
    finetune_epochs: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "round_to", _round_to(self.round_to))
        for bad, message in self._problems():
            if bad:
                raise InputError(message)

    def _problems(self):
        finite = math.isfinite
        yield (not (finite(self.eps) and self.eps >= 0), f"eps must be >= 0, got {self.eps}")
        yield (not (finite(self.lam) and self.lam > 0), f"lambda must be > 0, got {self.lam}")
        yield (self.loss not in LOSSES, f"unknown loss {self.loss!r}; expected one of {', '.join(LOSSES)}")
        yield (not (finite(self.margin) and self.margin >= 0), f"margin must be >= 0, got {self.margin}")
        yield (self.sparsity not in SPARSITY,
               f"unknown sparsity {self.sparsity!r}; expected one of {', '.join(SPARSITY)}")
        yield (not _whole(self.num_samples, 1), f"num_samples must be >= 1, got {self.num_samples}")
        yield (self.solver not in SOLVERS, f"unknown solver {self.solver!r}; expected one of {', '.join(SOLVERS)}")
        yield (not (finite(self.time_limit) and self.time_limit > 0),
               f"time limit must be > 0 seconds, got {self.time_limit}")
        yield (self.mode not in MODES, f"unknown mode {self.mode!r}; expected full, decoupled or auto")
        yield (self.workers is not None and not _whole(self.workers, 1),
               f"workers must be a positive integer, got {self.workers}")
        yield (not executor_ok(self.executor),
               f"unknown executor {self.executor!r}; expected threads, processes, serial, ray or ray:ADDRESS")
        yield (self.memory_limit is not None and not (finite(self.memory_limit) and self.memory_limit > 0),
               f"memory limit must be > 0 GB, got {self.memory_limit}")
        yield (self.threshold is not None and not (0 <= self.threshold <= 1),
               f"threshold must be in [0, 1], got {self.threshold}")
        yield (self.threshold is not None and self.mean_threshold,
               "--threshold and --mean-threshold exclude each other")
        yield (self.max_accuracy_drop is not None
               and not (finite(self.max_accuracy_drop) and 0 <= self.max_accuracy_drop <= 100),
               f"max accuracy drop must be in [0, 100] points, got {self.max_accuracy_drop}")
        yield (not (finite(self.confidence) and 0 <= self.confidence < 1),
               f"confidence must be in [0, 1), got {self.confidence}")
        yield (self.target_params is not None and not (0 < self.target_params <= 1),
               f"target params must be a fraction in (0, 1], got {self.target_params}")
        yield (self.target_macs is not None and not (0 < self.target_macs <= 1),
               f"target MACs must be a fraction in (0, 1], got {self.target_macs}")
        yield (sum(v is not None for v in (self.max_accuracy_drop, self.target_params, self.target_macs)) > 1,
               "give one budget: an accuracy budget, a parameter budget or a MAC budget")
        yield (self.reconstruct is not None and self.reconstruct not in RECONSTRUCTIONS,
               f"unknown reconstruction {self.reconstruct!r}; expected one of {', '.join(RECONSTRUCTIONS)}")
        yield (self.compensation and self.reconstruct not in (None, "none"),
               "--compensate-bias and --reconstruct exclude each other (--reconstruct bias refits the bias)")
        yield (not _whole(self.latency_batch, 1),
               f"latency batch must be an integer >= 1, got {self.latency_batch!r}")
        yield (not _whole(self.finetune_epochs, 1), f"finetune epochs must be >= 1, got {self.finetune_epochs}")

    def updated(self, **changes) -> "Options":
        """A copy with some options changed (checked again); an unknown name is an InputError."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise InputError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}



def executor_ok(kind) -> bool:
    """threads, processes, serial, ray, or ray:ADDRESS (decoupled mode's block solves)."""
    return isinstance(kind, str) and (kind in ("threads", "processes", "serial", "ray")
                                      or (kind.startswith("ray:") and len(kind) > 4))


def _whole(value, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= low


def _round_to(value) -> int | str:
    """'auto' or an integer >= 1 (an int or its decimal string); anything else is an InputError."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise InputError(f"round-to must be 'auto' or an integer >= 1, got {value!r}") from None
    if not _whole(value, 1):
        raise InputError(f"round-to must be 'auto' or an integer >= 1, got {value!r}")
    return int(value)


DEFAULTS = Options()
