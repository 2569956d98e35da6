"""Confirming an accuracy budget on evaluation images the selection never saw.

Why. The accuracy-budget search (`select.by_accuracy`) removes units while accuracy on the evaluation data stays
within the budget, and stops at the edge: the candidate it keeps is the largest one whose measured drop happened
to fall within the budget on these images. Among many candidates near the edge, the one kept is the one the
images flattered most (a winner's curse), and the images are a sample. Measured (docs/benchmarks.md): a
0.5-point budget met on 5,000 MNIST validation images lost 0.91 and 1.00 points on the 10,000 test images.

What. With `Options.confirm` (the default) the evaluation data are split once, deterministically (stratified by
class, shuffled with `seed`), into a *choose* part and a *confirm* part of equal size (`split_evaluation`), if
the confirm part can promise the budget at all (`images_needed`: at least MIN_CONFIRM_SAMPLES images, and enough
that a candidate changing no prediction has an interval no wider than the budget: a 1-point budget at 0.9 needs
654 evaluation images, 0.5 points 1,312). With fewer, nothing is split (half the images would only make the
search's choice noisier), the budget is met on all of them as before, and the report says it cannot be promised
on new data (`too_small`, `images_needed`). With enough:

1. The budget search runs on the choose part only, as before.
2. Its candidates that met the budget there form a ladder, fixed before the confirm part is looked at: by
   number of removed units, ascending (the counts the search measured, plus `LADDER` evenly spaced counts up to
   the one it chose, measured on the choose part too so each rung deploys its kept units the better way).
3. Each rung is measured on the confirm part against the unpruned model on the *same* images (paired): l images
   the pruned model gets wrong and the original right ("losses"), g the other way ("gains"). The drop is
   (l - g) / n. Its interval is the Agresti-Min interval for a difference of matched proportions (Agresti & Min,
   Statistics in Medicine 24 (2005) 729-740: the Wald interval after adding 1/2 to each cell of the 2 x 2
   table), two-sided at `confidence`. A rung is confirmed when the whole interval lies within the budget
   (upper end <= budget): the drop on new data from the same distribution exceeds the budget with probability
   at most (1 - confidence) / 2.
4. The rungs are tested in ascending order and the testing stops at the first rung that fails; the last
   confirmed rung is the selection. This is the fixed-sequence procedure: because the order was fixed by the
   choose part alone and testing stops at the first failure, the chance that the selection's true drop exceeds
   the budget stays at most (1 - confidence) / 2, however many rungs were tested (stepping *down* from the
   largest candidate until one passes would give every rung a chance to pass by luck).

When no rung is confirmed, the answer depends on whether the data could tell:
- the data answered (at least MIN_CONFIRM_SAMPLES confirm images, and the first rung's interval lies above the
  budget or is no wider than it): the budget is not met on new data; the caller treats it as an unmet budget
  (the MIP is solved again with a wider margin, then BudgetError);
- they are too small to tell (fewer images, or an interval that reaches below the budget but is wider than it):
  nothing can be promised either way. The choose part's selection is kept, unconfirmed, and the report says so
  (`too_small`, `message`) rather than refusing the run.

Why halves, an interval and 0.9 by default: docs/method.md (Selecting the units) and docs/benchmarks.md
(Confirming the budget), where it was measured against no confirmation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from . import select
from .data import Dataset
from .rewrite import remove_units
from .validate import run_tensors

CONFIRM_FRACTION = 0.5  # of the evaluation data, per class
MIN_CONFIRM_SAMPLES = 200  # fewer confirm images than this: too few to promise a budget
LADDER = 16  # evenly spaced removal counts measured below the choose part's pick


@dataclass
class Split:
    """The evaluation data cut into the part the budget search sees and the part that confirms its result."""

    choose: Dataset
    confirm: Dataset
    choose_indices: np.ndarray
    confirm_indices: np.ndarray


def split_evaluation(data: Dataset, seed: int = 0, fraction: float = CONFIRM_FRACTION) -> Split | None:
    """Split (x, y) into choose and confirm parts, stratified by class: within each class the images are shuffled
    with `seed` and `fraction` of them go to the confirm part; a class with an odd count gives its odd image to
    confirm or choose alternately (in a seeded order), so both parts stay within one image of half per class and
    overall. Deterministic for a seed. None when a part would be empty (fewer than 2 images)."""
    y = np.asarray(data.y)
    rng = np.random.default_rng(seed)
    confirm: list[np.ndarray] = []
    odd_turn = 0
    for c in rng.permutation(np.unique(y)):
        members = rng.permutation(np.flatnonzero(y == c))
        share = fraction * members.size
        count = int(math.floor(share))
        if share > count:  # the odd image: to confirm on every other such class
            count += odd_turn
            odd_turn = 1 - odd_turn
        confirm.append(members[:count])
    confirm_idx = np.sort(np.concatenate(confirm)) if confirm else np.zeros(0, dtype=np.int64)
    choose_idx = np.setdiff1d(np.arange(len(y)), confirm_idx)
    if confirm_idx.size == 0 or choose_idx.size == 0:
        return None
    part = lambda idx, name: Dataset(data.x[idx], y[idx], f"{data.source} ({name} part)")  # noqa: E731
    return Split(part(choose_idx, "choose"), part(confirm_idx, "confirm"), choose_idx, confirm_idx)


def paired_drop(before: np.ndarray, after: np.ndarray, confidence: float) -> dict[str, Any]:
    """Accuracy drop in points from `before` to `after` (per-image correctness of the same images) and its
    Agresti-Min interval at `confidence` (two-sided; 0 gives the point estimate as both ends)."""
    before, after = np.asarray(before, dtype=bool), np.asarray(after, dtype=bool)
    n = int(before.size)
    losses, gains = int(np.sum(before & ~after)), int(np.sum(~before & after))
    z = _z(confidence)
    center = (losses - gains) / (n + 2)
    spread = math.sqrt(max((losses + gains + 1) - (losses - gains) ** 2 / (n + 2), 0.0)) / (n + 2)
    lo, hi = max(center - z * spread, -1.0), min(center + z * spread, 1.0)
    return {"samples": n, "losses": losses, "gains": gains, "drop": 100.0 * (losses - gains) / max(n, 1),
            "interval": [100.0 * lo, 100.0 * hi]}


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2.0) if confidence > 0 else 0.0


def images_needed(budget: float, confidence: float) -> int | None:
    """The fewest confirm images that can promise `budget` points at `confidence`: MIN_CONFIRM_SAMPLES, and enough
    that the interval of a candidate changing no prediction (+-z / (n + 2)) is no wider than the budget. None
    when no number is enough (a budget of 0 at a positive confidence)."""
    z = _z(confidence)
    if z == 0:
        return MIN_CONFIRM_SAMPLES
    if budget <= 0:
        return None
    return max(MIN_CONFIRM_SAMPLES, math.ceil(200.0 * z / budget - 2.0))


def ort_correct(proto, net, data: Dataset, rewrite=remove_units) -> Callable:
    """scales -> per-image correctness (bool [n]) of the model rewritten with them (None: the original), by
    onnxruntime on `data`, the engine the written model is validated with. The original's is computed once."""
    original: list[np.ndarray] = []

    def correct(scales, built=None) -> np.ndarray:
        if scales is None and original:
            return original[0]
        model, new_net = (proto, net) if scales is None else (built or rewrite(proto, net, scales))
        logits = run_tensors(model, new_net.input_name, data.x, [new_net.logits_name], dtype=net.input_dtype)[0]
        value = logits.argmax(axis=1) == data.y
        if scales is None:
            original.append(value)
        return value

    return correct


class Confirmer:
    """The confirmation of one run's accuracy budget (see the module docstring).

    With enough evaluation data (`images_needed` for the confirm half) they are split: `choose` is the part the
    budget search sees, and `confirm()` tests its candidates on the other. With too few there is no split: the
    search sees all of them (half would only make its choice noisier) and the record says the budget cannot be
    promised."""

    def __init__(self, proto, net, data: Dataset, seed: int, budget: float, confidence: float,
                 rewrite=remove_units):
        self.net, self.budget, self.confidence = net, float(budget), float(confidence)
        self.samples = int(len(data.y))
        self.needed = images_needed(self.budget, self.confidence)
        half = int(self.samples * CONFIRM_FRACTION)
        split = split_evaluation(data, seed) if self.needed is not None and half >= self.needed else None
        self.split = split
        self.choose = split.choose if split is not None else data
        self.ladder = LADDER if split is not None else 0  # extra rungs the search measures for confirm()
        # rewrite: how candidates are built (with --reconstruct, reconstructed as they will be written)
        self.correct = ort_correct(proto, net, split.confirm, rewrite) if split is not None else None

    def _stats(self, scales, built=None) -> dict[str, Any]:
        return paired_drop(self.correct(None), self.correct(scales, built), self.confidence)

    def _passes(self, stats: dict) -> bool:
        return stats["interval"][1] <= self.budget + 1e-9

    def _too_small(self, stats: dict, confirmed: bool) -> bool:
        """Too few confirm images to promise the budget: fewer than MIN_CONFIRM_SAMPLES, or (when the budget was
        not confirmed) an interval that reaches below the budget and is wider than it: the data cannot tell
        whether the budget holds. An interval wholly above the budget is an answer: the budget is not met."""
        lo, hi = stats["interval"]
        if stats["samples"] < MIN_CONFIRM_SAMPLES:
            return True
        return not confirmed and lo <= self.budget + 1e-9 and hi - lo > self.budget + 1e-9

    def confirm(self, scores: dict[int, np.ndarray], chosen: select.Selection) -> select.Selection | None:
        """The largest rung of `chosen`'s ladder confirmed on the confirm part (a new Selection), or, when none is:
        `chosen` itself marked unconfirmed if the data are too small to tell, else None. The confirmation record
        is left in the returned selection's (or, on None, in `chosen`'s) `confirmation`."""
        if self.split is None:
            chosen.confirmation = self._unsplit_record()
            return chosen
        net = self.net
        order = select.removal_order(net, scores, chosen.order, ties=chosen.ties)
        rungs = sorted((row for row in chosen.tried if row["removed_units"] > 0
                        and row["drop"] <= self.budget + 1e-9), key=lambda row: row["removed_units"])
        ladder, last, failed = [], None, None
        for row in rungs:
            keep = select.keep_first_removed(scores, order, row["removed_units"])
            scales = select.to_scales(scores, keep, row["rescaled"])
            stats = self._stats(scales)
            passed = self._passes(stats)
            ladder.append({"removed_units": row["removed_units"], "params_after": row["params_after"],
                           "drop": round(stats["drop"], 4), "upper": round(stats["interval"][1], 4),
                           "confirmed": passed})
            if not passed:
                failed = stats
                break
            last = (row, scales, stats)
        if last is not None:
            row, scales, stats = last
            sel = select.Selection(scales=scales, rule=chosen.rule, threshold=row["threshold"],
                                   notes=list(chosen.notes), tried=chosen.tried, rescaled=row["rescaled"],
                                   order=chosen.order, ties=chosen.ties)
            sel.confirmation = self._record(stats, True, ladder)
            return sel
        if failed is None:  # no rung (cannot happen for a selection that met the budget): test the pick itself
            failed = self._stats(chosen.scales)
        if self._too_small(failed, confirmed=False):
            # nothing can be promised either way: keep the choose part's pick, say so
            chosen.confirmation = self._record(self._stats(chosen.scales), False, ladder, fallback=True)
            return chosen
        chosen.confirmation = self._record(failed, False, ladder)
        return None

    def recheck(self, selection: select.Selection, scales, built=None) -> None:
        """The confirmation of what is written, when it is not the selection itself (e.g. conv channels rounded
        back in): measured again on the confirm part; `confirmed` only if the selection was and it still holds."""
        record = selection.confirmation
        if self.split is None or record is None or all(np.array_equal(scales[k], selection.scales[k]) for k in selection.scales):
            return
        stats = self._stats(scales, built if built and built[0] is not None else None)
        confirmed = bool(record["confirmed"]) and self._passes(stats)
        selection.confirmation = self._record(stats, confirmed, record["ladder"], fallback=record["fallback"])

    def _unsplit_record(self) -> dict[str, Any]:
        record = {"choose_samples": self.samples, "confirm_samples": 0, "drop_on_confirm": None, "interval": None,
                  "confidence": self.confidence, "confirmed": False, "too_small": True, "losses": None,
                  "gains": None, "budget": self.budget, "method": "Agresti-Min interval, paired", "fallback": True,
                  "ladder": [], "images_needed": None if self.needed is None else 2 * self.needed}
        record["message"] = message(record)
        return record

    def _record(self, stats: dict, confirmed: bool, ladder: list, fallback: bool = False) -> dict[str, Any]:
        small = fallback or self._too_small(stats, confirmed)
        lo, hi = stats["interval"]
        record = {"choose_samples": int(len(self.split.choose_indices)), "confirm_samples": stats["samples"],
                  "drop_on_confirm": round(stats["drop"], 4), "interval": [round(lo, 4), round(hi, 4)],
                  "confidence": self.confidence, "confirmed": confirmed, "too_small": small,
                  "losses": stats["losses"], "gains": stats["gains"], "budget": self.budget,
                  "method": "Agresti-Min interval, paired", "fallback": fallback, "ladder": ladder,
                  "images_needed": None if self.needed is None else 2 * self.needed}
        record["message"] = message(record)
        return record


def message(record: dict) -> str:
    """The confirmation in words (the CLI's summary line and the report's `message`)."""
    budget, c = record["budget"], record["confidence"]
    needed = record.get("images_needed")
    more = (f"give {needed:,}+ evaluation images or a larger budget" if needed is not None else
            "a budget of 0 can only be confirmed at --confidence 0")
    if record["confirm_samples"] == 0:
        enough = f"{needed:,}+ would be" if needed is not None else "no number is, at this confidence"
        return (f"not confirmed: {record['choose_samples']:,} evaluation images are too few to promise a "
                f"{budget:g}-point budget on new data at {c:.0%} ({enough}); it was met on all of them")
    lo, hi = record["interval"]
    n = record["confirm_samples"]
    measured = (f"drop {record['drop_on_confirm']:.2f} points on the {n:,} confirmation images (not used to choose; "
                f"{record['losses']} lost, {record['gains']} gained), {c:.0%} interval [{lo:.2f}, {hi:.2f}]")
    if record["confirmed"]:
        text = f"{measured}: within the {budget:g}-point budget"
    elif record["fallback"]:
        text = f"{measured}: not confirmed; kept the removal chosen on the other images"
    else:
        text = f"{measured}: above the {budget:g}-point budget"
    if record["too_small"] and record["confirmed"]:
        text += (f"; with fewer than {MIN_CONFIRM_SAMPLES} confirmation images the interval is rough: {more} to "
                 f"rely on it")
    elif record["too_small"]:
        text += f". The evaluation data are too small to promise a {budget:g}-point budget at {c:.0%}: {more}"
    return text


def failure_message(record: dict) -> str:
    """BudgetError text when no candidate was confirmed on ample data."""
    lo, hi = record["interval"]
    return (f"no removal kept the accuracy drop within {record['budget']:g} points on the "
            f"{record['confirm_samples']:,} confirmation images at {record['confidence']:.0%} confidence: the "
            f"smallest lost {record['drop_on_confirm']:.2f} points (interval [{lo:.2f}, {hi:.2f}]); give a larger "
            f"budget, a lower --confidence, or --no-confirm")
