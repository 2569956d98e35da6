"""One rule for "the same numbers" between two computations of a model's outputs (product and tests alike).

Two engines (onnxruntime and the IR's numpy forward, or one engine on two CPUs) add the same terms in a
different order, with different vector kernels. The difference scales with the magnitude of what is compared,
not with a fixed number, so the allowance is relative to the larger of 1 and the largest |value| of the
reference, times a factor set by the element type the model computes in. A rewrite that drops or misplaces a
unit changes logits by a unit's contribution, orders of magnitude above these allowances.
"""
from __future__ import annotations

import numpy as np

# relative allowance per element type (float32 about 800 ulps of the logit scale; measured differences between
# onnxruntime kernels on CPUs with and without AVX-512 stay near 1e-6)
RELATIVE = {np.dtype(np.float16): 2e-2, np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}


def allowed_error(reference, dtype=np.float32) -> float:
    """The largest absolute difference accepted against `reference` for a model computing in `dtype`."""
    scale = max(1.0, float(np.max(np.abs(np.asarray(reference, dtype=np.float64)), initial=0.0)))
    return RELATIVE[np.dtype(dtype)] * scale


def max_error(got, reference) -> float:
    """The largest absolute elementwise difference, in float64."""
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    return float(np.max(diff, initial=0.0))


def assert_same(got, reference, dtype=np.float32) -> None:
    """Raise AssertionError unless `got` equals `reference` within `allowed_error` (shapes must match)."""
    got, reference = np.asarray(got), np.asarray(reference)
    if got.shape != reference.shape:
        raise AssertionError(f"shapes differ: {list(got.shape)} vs {list(reference.shape)}")
    err, allowed = max_error(got, reference), allowed_error(reference, dtype)
    if not err <= allowed:
        raise AssertionError(f"max |difference| {err:.3g} exceeds the allowed {allowed:.3g}")
