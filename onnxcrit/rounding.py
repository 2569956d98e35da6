"""Kept conv channels rounded up to what onnxruntime runs fast, chosen by timing the candidates.

onnxruntime's default graph optimisation runs convolutions in a blocked channel layout (NCHWc: blocks of 8
channels with AVX2, 16 with AVX-512). A pruned layer whose kept count falls just off a block boundary does the
work of the full blocks plus reorder overhead, and the pruned model can be slower than the original (the digits
CNN: 8 and 16 channels pruned to 7 and 12 ran x0.57 at batch 64). `round_up` (select.py) adds back the best
removed channels to reach a multiple of K; this module builds the candidates for K in ROUNDINGS, checks them
against the selection's budget, times them against the original in one interleaved run, and picks one.

Dense layers are not rounded: onnxruntime's matrix products showed no step at multiples of 8 or 16 (a 784-N-10
MLP, N = 144..168: every N within the +-4% timing noise), so added units would only cost.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from . import measure, select
from .ir import Conv, Network
from .rewrite import remove_units

ROUNDINGS = (1, 4, 8, 16)  # what --round-to auto tries
ROUNDED_KINDS = (Conv,)
# candidates whose geometric-mean speed-ups differ by less than this fraction count as tied (less rounding wins):
# a few percent is what repeated timings of one model differ by on a loaded machine
TIE = 0.02
# a speed-up below this at some batch size makes a model `slower` than the original (closer to 1 is noise)
SLOWER = 1.0 - TIE
# the default timer: at most this many interleaved rounds per batch size, stopping after about this many seconds
REPEATS, SECONDS, WARMUP = 200, 0.25, 3

# models (the original first) and a batch size -> seconds per `batch` samples of each, timed in alternation
Timer = Callable[[list, int], list]


def default_timer(net: Network, threads: int = 1) -> Timer:
    """onnxruntime on this machine: CPU time of the calling thread (with one intra-op thread onnxruntime runs
    there, so it is the run's work without the time the machine gave to other processes), interleaved, median."""
    def timer(models: list, batch: int) -> list[float]:
        return measure.paired_latency(models, net.input_name, net.input_shape, batch, repeats=REPEATS,
                                      warmup=WARMUP, threads=threads, clock="cpu", fixed_batch=net.fixed_batch,
                                      seconds=SECONDS)
    return timer


@dataclass
class Candidate:
    """One rounding of the selection: its scales and keep masks, the rewritten model, what was measured."""

    round_to: int
    scales: dict[int, np.ndarray]
    keep: dict[int, np.ndarray]
    units: tuple[int, ...]
    model: onnx.ModelProto | None = None
    network: Network | None = None
    params: int = 0
    accuracy: float | None = None
    meets_budget: bool = True
    same_as: list[int] = field(default_factory=list)  # the larger K that gave the same kept counts
    after_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)

    @property
    def geomean(self) -> float:
        values = list(self.speedup.values())
        return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")

    def row(self) -> dict:
        out = {"round_to": self.round_to, "same_as": list(self.same_as), "units": list(self.units),
               "params": self.params, "accuracy": None if self.accuracy is None else round(self.accuracy, 4),
               "meets_budget": self.meets_budget}
        for b in sorted(self.after_ms):
            out[f"batch_{b}_ms"] = round(self.after_ms[b], 4)
            out[f"speedup_batch_{b}"] = round(self.speedup[b], 4)
        if self.speedup:
            out["speedup_geomean"] = round(self.geomean, 4)
        return out


def candidates(net: Network, proto: onnx.ModelProto, scores: dict[int, np.ndarray], selection: select.Selection,
               roundings: tuple[int, ...], build: bool = True, rewrite=remove_units) -> list[Candidate]:
    """One candidate per distinct kept-count vector of `roundings` (a larger K with the same counts as a smaller
    one is skipped and listed in the smaller one's same_as), each rewritten when `build` by `rewrite` (the
    signature of `remove_units`; a `reconstruct.Reconstructor`'s also reconstructs)."""
    out: list[Candidate] = []
    for k in sorted(set(roundings)):
        scales, keep = select.round_up(net, scores, selection.scales, k, selection.rescaled, ROUNDED_KINDS,
                                       order=selection.order, ties=selection.ties)
        units = select.kept_counts(keep)
        twin = next((c for c in out if c.units == units), None)
        if twin is not None:
            twin.same_as.append(k)
            continue
        cand = Candidate(round_to=k, scales=scales, keep=keep, units=units)
        if build:
            cand.model, cand.network = rewrite(proto, net, scales, keep=keep)
            cand.params = measure.totals(measure.layer_table(cand.network, cand.model))["params"]
        out.append(cand)
    return out


def time_candidates(proto: onnx.ModelProto, cands: list[Candidate], batches: tuple[int, ...],
                    timer: Timer) -> dict[int, float]:
    """Time the original and every candidate in one interleaved run per batch size; fills each candidate's
    after_ms and speedup, returns the original's ms per batch size."""
    before = {}
    for b in batches:
        seconds = timer([proto] + [c.model for c in cands], b)
        if len(seconds) != len(cands) + 1 or not all(s > 0 and math.isfinite(s) for s in seconds):
            raise RuntimeError(f"the latency timer returned {seconds!r} for {len(cands) + 1} models")
        before[b] = 1e3 * seconds[0]
        for cand, s in zip(cands, seconds[1:]):
            cand.after_ms[b] = 1e3 * s
            cand.speedup[b] = seconds[0] / s
    return before


def choose(cands: list[Candidate], tie: float = TIE) -> Candidate:
    """The fastest candidate within the budget: best geometric mean of the speed-ups over the batch sizes; a
    candidate with more rounding must beat one with less by more than `tie` (relative) to be chosen."""
    eligible = sorted((c for c in cands if c.meets_budget), key=lambda c: c.round_to)
    if not eligible:
        raise ValueError("no candidate meets the budget")
    best = eligible[0]
    for cand in eligible[1:]:
        if cand.geomean > best.geomean * (1.0 + tie):
            best = cand
    return best


def is_slower(cand: Candidate) -> bool:
    """Slower than the original at some measured batch size, by more than the timing noise (SLOWER)."""
    return any(s < SLOWER for s in cand.speedup.values())


def latency_report(before_ms: dict[int, float], chosen: Candidate, cands: list[Candidate], mode: str) -> dict:
    """report["latency"]: batch_<B> before/after/speed-up of the written model, the rounding, every candidate."""
    out: dict = {f"batch_{b}": {"before_ms": round(before_ms[b], 4), "after_ms": round(chosen.after_ms[b], 4),
                                "speedup": round(chosen.speedup[b], 4)} for b in sorted(before_ms)}
    out.update(round_to=chosen.round_to, round_to_mode=mode, candidates=[c.row() for c in cands],
               slower=is_slower(chosen), clock="cpu")
    return out


def slower_message(latency: dict) -> str:
    """One line for a written model slower than the original at some batch size (report["latency"])."""
    batches = sorted(int(k.split("_")[1]) for k in latency if k.startswith("batch_"))
    speeds = ", ".join(f"batch {b} x{latency[f'batch_{b}']['speedup']:.2f}" for b in batches)
    text = f"the pruned model is slower than the original in onnxruntime on this machine: {speeds}"
    chosen = latency["round_to"]
    faster = [c for c in latency["candidates"] if c["meets_budget"] and c["round_to"] != chosen
              and all(c[f"speedup_batch_{b}"] >= SLOWER for b in batches)]
    if latency["round_to_mode"] != "auto":
        return text + f" (--round-to {chosen}; --round-to auto tries {', '.join(map(str, ROUNDINGS))})"
    if faster:
        best = faster[0]
        return text + (f"; --round-to {best['round_to']} was not slower at any batch size ("
                       + ", ".join(f"x{best[f'speedup_batch_{b}']:.2f}" for b in batches)
                       + f") but slower on their geometric mean; pin it with --round-to {best['round_to']}")
    meeting = [c for c in latency["candidates"] if c["meets_budget"]]
    within = " within the budget" if len(meeting) < len(latency["candidates"]) else ""
    tried = ", ".join(str(c["round_to"]) for c in meeting)
    return text + (f"; no rounding of the kept conv channels tried{within} (--round-to {tried}) avoids it; the "
                   "pruning still saves parameters and MACs")
