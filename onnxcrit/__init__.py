"""onnxcrit: prune ReLU networks in ONNX files with the OAMIP mixed-integer program.

The public face: `optimize()` and `evaluate()`, their `Options` and `Result`, `write_model()`, and the errors.

The lower-level API: the pieces `optimize()` is made of, for those who assemble their own pipeline (the
benchmarks in benchmarks/ use these and nothing else). Scores and selections are dicts keyed by a scored
layer's position in `Network.layers` (`Network.scored_indices()`): per unit a score in [0, 1], a keep mask,
or a scale (0 removes the unit; a kept unit's factor is folded into the next layer's weights).

- loading: `load_network(model) -> (Network, canonical ModelProto)`; `Network` is the recognised chain
  (`layers`, `scored_indices()`, `forward(x, scales)`, `activations`, `params`, `macs`, `input_name`, ...).
- scoring: `compute_scores(net, x, y, **options)` (the OAMIP on calibration images drawn from x, y; options as
  `optimize`'s) and `decoupled_scores(net, x, y, workers=..., head=...)` (one program per block); both return
  a record whose `scores` is the dict above.
- selection: `keep_by_threshold(net, scores, threshold, mean_rule=False)` (keep masks) and
  `to_scales(scores, keep, rescale)` (masks -> scales); `removal_order(net, scores, rule=None)` (the order the
  budgets remove units in across layers: by default each score over its layer's mean, ties broken by
  `magnitude(net)`, L1 of incoming x outgoing weights, likewise relative (under `lsq` the pipeline breaks ties
  by `obs_saliency(net, x)` instead: what removing a unit costs once its readers are refitted); other rules for comparison in
  `select.ORDERS`, taken by `by_accuracy` / `by_params` as `order=`) and
  `keep_first_removed(scores, order, count)`; `by_accuracy(net, scores, x, y, max_drop,
  accuracy_of=...)` and `by_params(net, scores, fraction)` (the budgets; each returns (selection or None,
  closest selection), a selection's `scales` the dict above); `round_up(net, scores, scales, multiple,
  rescaled)` (--round-to K: returns (scales, keep)); `params_after(net, keep)` (parameters left).
- rewrite: `remove_units(model, net, scales, compensation=None, keep=None) -> (smaller model, its Network)`;
  `bias_compensation(net, x, scales)` (--compensate-bias: the `compensation` argument).
- reconstruction: `Reconstructor(model, net, method, x, measure=..., damp=...)` (--reconstruct: its `rewrite`
  has `remove_units`' signature and refits the layer after each scored one; `reference(scales, keep)` gives
  the network validation compares against).
- confirmation: `Confirmer(model, net, Dataset(x, y, source), seed, budget, confidence, rewrite)` (an
  accuracy budget chosen on its `choose` half with `by_accuracy(..., ladder=c.ladder)`, then `c.confirm(scores,
  chosen)` tests the ladder on the other half: the confirmed selection, or None).
- validation: `check_rewrite(original, rewritten, net, scales, [x, ...], y)` -> a report with `ok`, `reasons`,
  `agreement`, `accuracy_before`/`_after` (fractions), logit differences.
- measurement: `layer_table(net, model)` (per linear layer: name, kind, units, params as stored, MACs) and
  `paired_timings(models, input_name, input_shape, batch, repeats, warmup, ...)` (onnxruntime, models timed
  in alternation: {"wall": [...], "cpu": [...]} median seconds per batch).
- training: `retrain(model, train, init=..., kept=...)` (what `onnxcrit retrain` runs; needs the finetune extra).
- `Progress`: the stage notifications `optimize(progress=...)` sends (start, done, note).

`compute_scores`, `decoupled_scores` and `retrain` load the solver / training stack on first use.
"""
from .api import Progress, Result, evaluate, optimize
from .errors import (BudgetError, InputError, OnnxcritError, ResourceError, SolveError, UnsupportedModelError,
                     ValidationError)
from .frontend import load_network
from .ir import Network
from .measure import layer_table, paired_timings
from .options import DEFAULT_RECONSTRUCT, DEFAULTS, Options
from .confirm import Confirmer
from .data import Dataset
from .output import write_model
from .reconstruct import Reconstructor
from .rewrite import bias_compensation, remove_units
from .saliency import obs_saliency
from .select import (by_accuracy, by_params, keep_by_threshold, keep_first_removed, magnitude, params_after,
                     removal_order, round_up, to_scales)
from .validate import check_rewrite

__all__ = ["optimize", "evaluate", "Options", "DEFAULTS", "DEFAULT_RECONSTRUCT", "Result", "write_model", "OnnxcritError", "InputError",
           "UnsupportedModelError", "ResourceError", "SolveError", "BudgetError", "ValidationError",
           # the lower-level API (module docstring)
           "load_network", "Network", "compute_scores", "decoupled_scores", "keep_by_threshold", "to_scales",
           "removal_order", "keep_first_removed", "magnitude", "obs_saliency", "by_accuracy", "by_params", "round_up", "params_after",
           "remove_units", "bias_compensation", "Reconstructor", "Confirmer", "Dataset", "check_rewrite", "layer_table", "paired_timings", "retrain",
           "Progress"]
__version__ = "0.1.0"

# imported on first use: the MIP stack (scoring, decoupled) and the training code stay out of `import onnxcrit`
_LAZY = {"compute_scores": "scoring", "decoupled_scores": "decoupled", "retrain": "finetune"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
