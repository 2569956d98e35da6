"""Checks with onnx.checker and onnxruntime: the rewritten model is valid, keeps its interface, and computes
exactly the masked IR forward pass; how far it moved from the original is measured, not judged."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import ValidationError
from .frontend import load_model
from .ir import Network
from .output import needs_external_data, write_model
from .rewrite import with_bias_shift
from .tolerance import allowed_error, max_error

BATCH = 256  # onnxruntime runs in chunks of this many samples
IR_CHECK = 512  # inputs per set the written model is compared with the numpy reference on (all count for agreement)
OPTIMIZATION_LEVELS = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                       "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                       "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                       "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}


def session(model: onnx.ModelProto | str, threads: int = 1, optimization: str = "all") -> ort.InferenceSession:
    """A CPU onnxruntime session with a fixed thread count (deterministic timings and results).

    optimization: onnxruntime's graph optimisation level ("all" is its default; "extended" leaves out the
    NCHWc layout transform).
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model whose graph outputs are exactly `names` (e.g. to read the logits under a tail)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name: o for o in copy.graph.output}
    del copy.graph.output[:]
    for name in names:
        copy.graph.output.append(existing.get(name) or onnx.helper.make_empty_tensor_value_info(name))
    return copy


def declared_batch(sess: ort.InferenceSession, input_name: str) -> int | None:
    """The batch size the model's input is declared with, when it is a fixed number (e.g. 1); else None."""
    dim = next(i for i in sess.get_inputs() if i.name == input_name).shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def run_batched(sess: ort.InferenceSession, input_name: str, x: np.ndarray, names: list[str] | None = None
                ) -> list[np.ndarray]:
    """Run x through the session in chunks: of the declared batch size when the model fixes one (the last chunk
    padded with zeros, whose outputs are dropped), else of BATCH samples. Outputs are concatenated."""
    fixed = declared_batch(sess, input_name)
    step = fixed or BATCH
    chunks = []
    for start in range(0, len(x), step):
        part = x[start:start + step]
        if fixed and len(part) < fixed:
            part = np.concatenate([part, np.zeros((fixed - len(part), *part.shape[1:]), part.dtype)])
        outs = sess.run(names, {input_name: part})
        chunks.append([o[:min(step, len(x) - start)] for o in outs])
    if not chunks:
        return [np.zeros((0,)) for _ in (names or sess.get_outputs())]
    return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]


def run_tensors(model: onnx.ModelProto, input_name: str, x: np.ndarray, names: list[str],
                dtype=np.float32) -> list[np.ndarray]:
    """Values of the named tensors for input x, computed by onnxruntime (batched as `run_batched`)."""
    sess = session(with_outputs(model, names))
    return run_batched(sess, input_name, np.asarray(x, dtype=dtype), names)


def check_canonical(published: onnx.ModelProto, canonical: onnx.ModelProto, net: Network, x: np.ndarray) -> float:
    """The canonical model computes the published model's outputs on x (onnxruntime, `tolerance.allowed_error`
    on every float output) and keeps its interface; returns the largest difference, raises ValidationError."""
    reasons = _interface_changes(published, canonical)
    x = _inputs(x, net)
    names = [o.name for o in published.graph.output]
    with tempfile.TemporaryDirectory(prefix="onnxcrit-canonical-") as tmp:
        before = run_batched(_probe(published, names, tmp, "published"), net.input_name, x, names)
        after = run_batched(_probe(canonical, names, tmp, "canonical"), net.input_name, x, names)
    worst = 0.0
    for name, a, b in zip(names, before, after):
        if a.dtype.kind != "f":
            continue  # labels follow from the float outputs compared here
        err, allowed = max_error(b, a), allowed_error(a, net.input_dtype)
        worst = max(worst, err)
        if a.shape != b.shape or err > allowed:
            reasons.append(f"output '{name}' differs by {err:.3g} (allowed {allowed:.3g})")
    if reasons:
        passes = ", ".join(net.canonicalised) or "none"
        raise ValidationError(f"canonicalisation ({passes}) changed the model: " + "; ".join(reasons))
    return worst


@dataclass
class ValidationReport:
    """Outcome of `check_rewrite`. ok is False when any check failed; reasons say which, one line each."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    max_abs_vs_masked_ir: float = float("nan")
    tolerance: float = float("nan")  # what max_abs_vs_masked_ir was allowed (onnxcrit.tolerance's rule)
    agreement: float = float("nan")  # share of inputs whose top-1 class equals the original model's
    max_abs_logit_diff: float = float("nan")  # against the original model
    mean_abs_logit_diff: float = float("nan")
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    samples: int = 0

    def raise_if_failed(self) -> None:
        """Raise ValidationError (exit code 1) naming every failed check."""
        if not self.ok:
            raise ValidationError("rewritten model failed validation: " + "; ".join(self.reasons))


def check_rewrite(original: onnx.ModelProto, rewritten: onnx.ModelProto | str | Path, net_original: Network,
                  scales: dict[int, np.ndarray], x_list: Sequence[np.ndarray], y=None, *,
                  compensation: dict[int, np.ndarray] | None = None) -> ValidationReport:
    """Validate a rewritten model against the original and the masked IR forward pass.

    Checks: onnx.checker (full, by path) and an onnxruntime CPU session on the model as written; input and
    output names, element types and ranks unchanged; logits equal `net_original.forward(x, scales)` (with
    `compensation` bias shifts, if any) within `tolerance.allowed_error` on the first IR_CHECK inputs of every
    array of x_list. Measures top-1
    agreement and logit differences against the original. y labels x_list[-1] (or is a list of label arrays or
    None, one per x_list entry) and gives accuracy before/after.
    """
    report = ValidationReport(ok=True)
    with tempfile.TemporaryDirectory(prefix="onnxcrit-validate-") as tmp:
        if isinstance(rewritten, onnx.ModelProto):
            path = write_model(rewritten, Path(tmp) / "rewritten.onnx")
            model = rewritten
        else:
            path = Path(rewritten)
            model = load_model(path)
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except Exception as exc:  # noqa: BLE001 - the checker raises several types
            report.reasons.append(f"onnx.checker: {_first_line(exc)}")
        report.reasons += _interface_changes(original, model)
        try:
            first = _inputs(x_list[0], net_original)[:2]
            written = session(str(path))
            new_outputs = run_batched(written, net_original.input_name, first)
            new_logits = _logits(model, net_original, x_list, tmp, "rewritten")
            old_sess = _probe(original, [o.name for o in original.graph.output] + [net_original.logits_name], tmp,
                              "original")
            old_outputs = run_batched(old_sess, net_original.input_name, first,
                                      [o.name for o in original.graph.output])
            old_logits = _logits(original, net_original, x_list, tmp, "original", old_sess)
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors come in many types
            report.reasons.append(f"onnxruntime: {_first_line(exc)}")
            report.ok = False
            return report
        report.reasons += _output_changes(written, original, old_outputs, new_outputs)
    reference = with_bias_shift(net_original, compensation)
    # the numpy reference on the first IR_CHECK inputs of each set (onnxruntime runs on all of them): the forward
    # pass in float64 at full width is the slow part (VGG-11: 80 s for 3,200 images)
    refs = [reference.forward(_inputs(x, net_original)[:IR_CHECK], scales=scales) for x in x_list]
    # one allowance for the whole check, relative to the largest logit of any set compared
    report.tolerance = allowed_error(np.concatenate([r.reshape(-1) for r in refs]), net_original.input_dtype)
    errors, diffs, agree, correct_before, correct_after, labelled = [], [], [], 0, 0, 0
    for i, (ref, new, old) in enumerate(zip(refs, new_logits, old_logits)):
        if new[:IR_CHECK].shape != ref.shape:
            report.reasons.append(f"input set {i}: logits have shape {list(new[:IR_CHECK].shape)}, expected "
                                  f"{list(ref.shape)}")
            errors.append(float("inf"))
            continue
        err = max_error(new[:IR_CHECK], ref)
        errors.append(err)
        if err > report.tolerance:
            report.reasons.append(f"input set {i}: logits differ from the masked IR forward pass by {err:.3g} "
                                  f"(allowed {report.tolerance:.3g})")
        diffs.append(np.abs(new.astype(np.float64) - old).reshape(-1))
        agree.append(new.argmax(axis=1) == old.argmax(axis=1))
        labels = _labels_for(y, i, len(x_list))
        if labels is not None:
            labels = np.asarray(labels).reshape(-1)
            correct_before += int(np.sum(old.argmax(axis=1) == labels))
            correct_after += int(np.sum(new.argmax(axis=1) == labels))
            labelled += len(labels)
    all_diffs = np.concatenate(diffs) if diffs else np.zeros(0)
    report.samples = int(sum(len(a) for a in agree))
    report.max_abs_vs_masked_ir = max(errors, default=0.0)
    report.agreement = float(np.concatenate(agree).mean()) if report.samples else float("nan")
    report.max_abs_logit_diff = float(all_diffs.max(initial=0.0))
    report.mean_abs_logit_diff = float(all_diffs.mean()) if all_diffs.size else 0.0
    if labelled:
        report.accuracy_before = correct_before / labelled
        report.accuracy_after = correct_after / labelled
    report.ok = not report.reasons
    return report


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _labels_for(y, i: int, count: int):
    if y is None:
        return None
    if isinstance(y, (list, tuple)):
        return y[i]
    return y if i == count - 1 else None


def _type_of(vi: onnx.ValueInfoProto) -> tuple[int, int | None]:
    t = vi.type.tensor_type
    return t.elem_type, (len(t.shape.dim) if t.HasField("shape") else None)


def _interface_changes(original: onnx.ModelProto, model: onnx.ModelProto) -> list[str]:
    reasons = []
    inits = {t.name for t in original.graph.initializer}
    for what, old, new in (("input", [vi for vi in original.graph.input if vi.name not in inits],
                            [vi for vi in model.graph.input if vi.name not in inits]),
                           ("output", list(original.graph.output), list(model.graph.output))):
        if [vi.name for vi in old] != [vi.name for vi in new]:
            reasons.append(f"{what} names changed: {[vi.name for vi in old]} -> {[vi.name for vi in new]}")
            continue
        for a, b in zip(old, new):
            (ta, ra), (tb, rb) = _type_of(a), _type_of(b)
            if ta != tb:
                reasons.append(f"{what} '{a.name}' element type changed: {onnx.TensorProto.DataType.Name(ta)} -> "
                               f"{onnx.TensorProto.DataType.Name(tb)}")
            if ra is not None and rb is not None and ra != rb:
                reasons.append(f"{what} '{a.name}' rank changed: {ra} -> {rb}")
    return reasons


def _output_changes(written: ort.InferenceSession, original: onnx.ModelProto, old: list, new: list) -> list[str]:
    """Compare what the sessions actually return: names, dtypes, ranks."""
    reasons = []
    names = [o.name for o in written.get_outputs()]
    if names != [o.name for o in original.graph.output]:
        reasons.append(f"onnxruntime sees outputs {names}, expected {[o.name for o in original.graph.output]}")
    for name, a, b in zip(names, old, new):
        if a.dtype != b.dtype or a.ndim != b.ndim:
            reasons.append(f"output '{name}' is {b.dtype} rank {b.ndim}, the original gives {a.dtype} rank {a.ndim}")
    return reasons


def _probe(model: onnx.ModelProto, names: list[str], tmp: str, tag: str) -> ort.InferenceSession:
    """A session on a copy of the model that also outputs `names` (written to disk when it is too big)."""
    probe = with_outputs(model, names)
    if needs_external_data(probe):
        return session(str(write_model(probe, Path(tmp) / f"{tag}_probe.onnx", external_data=True)))
    return session(probe)


def _inputs(x, net: Network) -> np.ndarray:
    return np.asarray(x).reshape(-1, *net.input_shape).astype(net.input_dtype)


def _logits(model: onnx.ModelProto, net: Network, x_list, tmp: str, tag: str,
            sess: ort.InferenceSession | None = None) -> list[np.ndarray]:
    """The logits tensor (read by name, under any tail) for every array of x_list, as float64."""
    sess = sess or _probe(model, [net.logits_name], tmp, tag)
    logits = []
    for x in x_list:
        x = _inputs(x, net)
        value = run_batched(sess, net.input_name, x, [net.logits_name])[0] if len(x) else np.zeros((0, 1))
        logits.append(value.astype(np.float64).reshape(len(x), net.num_classes))
    return logits
