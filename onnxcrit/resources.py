"""Resource guards: the full MIP's memory estimated before it is built, the memory the machine has, and a
MemoryError turned into one line.

Where the memory goes. The formulation applies each linear layer to all N calibration images at once as one
sparse product (`formulation.base.ProblemBuilder.linear_map`): the Kronecker product of an N x N identity with
the layer's per-image matrix (dense: its weight; conv: output channel x position by input channel x pixel, one
nonzero per multiply-accumulate that falls inside the input), times the layer's input expressions. Building it
holds several arrays as long as N times that matrix's nonzeros at once (COO -> CSR, the product, a CSC copy),
so the largest layer sets the build's peak. The solver process then loads the finished problem while the
onnxcrit process still holds it; together they stayed below the build's peak on every model measured.

The estimate, from the network and N alone:

    bytes = max(BYTES_PER_NONZERO x N x (nonzeros of the largest per-image matrix),
                BYTES_PER_TOTAL_NONZERO x N x (nonzeros of all per-image matrices)) + BASE_BYTES

The second term is for deep graphs, where many layers of similar size make the finished problem, and the
solver's factorisation of it, outweigh the build of the largest layer: the corpus ResNet-8 (8 x 8 digits) with
200 images peaked at 673 MB (build 246 MB, the rest HiGHS's interior point) where the first term alone said
438 MB; 24 bytes per nonzero of all matrices covers it (786 MB) and every other case measured (the peak over
all layers' nonzeros was 14-19 bytes each on LeNet-5, the wide CNN and ResNet-8), and leaves the chains'
estimates as they were except the wide CNN's (2-3% more).

Measured (tools/bench_memory.py on the digits models, LeNet-5 with N 10-100 and a wide CNN, conv 64-128-256 at
32 x 32 x 3, with N 1-3; tools/results/bench_memory.md): the peak of the onnxcrit process and its solver process
together was the build's, 37-49 bytes per nonzero of the largest layer matrix on the larger problems, and the
solve never went above it. With 50 bytes the estimate was never below the measured peak and at most 1.9 times it
above 250 MB (2.6 times on small problems, where the solver process's fixed size dominates). `nonzeros`
(reported) is N times the nonzeros of all per-image matrices: the entries the build multiplies out (VGG-11 at
32 x 32 with 10 images: 1.1e9, for an estimate of 28 GB).

The limit: `Options.memory_limit` (GB) or, by default, MEMORY_FRACTION of the memory available when the run
starts (MemAvailable in /proc/meminfo, capped by a cgroup's limit; os.sysconf elsewhere). A full-mode run over it
is refused in one line (ResourceError, exit 2) naming the estimate and the ways out; under mode auto the run
switches to decoupled mode and the report's `mode_reason` says why.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from .errors import ResourceError
from .ir import Conv, Network

BYTES_PER_NONZERO = 50.0  # bytes of peak memory per nonzero of the largest layer matrix (tools/bench_memory.py)
BYTES_PER_TOTAL_NONZERO = 24.0  # ... and per nonzero of all layer matrices, when that is more (deep graphs)
BASE_BYTES = 150_000_000  # the solver process's interpreter and libraries
MEMORY_FRACTION = 0.8  # of the available memory, the default limit
GB = 1e9


def layer_nonzeros(net: Network) -> list[int]:
    """Nonzeros of each linear layer's per-image matrix, in network order (conv: output channels x input
    channels x the kernel taps inside the input, summed over output positions; dense: the weight's elements)."""
    out = []
    for k in net.linear_indices():
        layer = net.layers[k]
        if isinstance(layer, Conv):
            out.append(int(layer.units * layer.weight.shape[1] * int((layer.patches() >= 0).sum())))
        else:
            out.append(int(layer.weight.size))
    return out


@dataclass(frozen=True)
class Estimate:
    """The full MIP for `num_samples` images, before it is built."""

    num_samples: int
    nonzeros: int  # N x the nonzeros of every per-image layer matrix: what the build multiplies out
    largest: int  # N x the nonzeros of the largest one: what sets the peak
    bytes: int  # estimated peak memory of build and solve together

    def describe(self) -> str:
        return (f"the full MIP for {self.num_samples} calibration image{'s' if self.num_samples != 1 else ''} would "
                f"need about {_size(self.bytes)} ({_count(self.nonzeros)} nonzeros in its layer matrices)")


def estimate_full(net: Network, num_samples: int) -> Estimate:
    """Size and peak memory of the full MIP for `num_samples` images (module docstring), without building it."""
    per_image = layer_nonzeros(net)
    n = int(num_samples)
    largest, total = n * max(per_image, default=0), n * sum(per_image)
    peak = max(BYTES_PER_NONZERO * largest, BYTES_PER_TOTAL_NONZERO * total)
    return Estimate(n, total, largest, int(peak + BASE_BYTES))


def available_bytes() -> int | None:
    """Memory this process could still get: MemAvailable, capped by the cgroup's limit; None if unknown."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except OSError:
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    cgroup = _cgroup_room()
    if cgroup is not None:
        found.append(cgroup)
    return min(found) if found else None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's memory cgroup (v2, else v1), if it has a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text == "max":
                return None
            limit = int(text)
            with open(usage_file) as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit >= 2**60:  # v1's "no limit"
            return None
        return max(limit - usage, 0)
    return None


def memory_limit(option: float | None) -> tuple[int | None, str]:
    """(bytes a run may take, how that was decided): the option (GB), else MEMORY_FRACTION of what is available."""
    if option is not None:
        return int(option * GB), "allowed by --memory-limit"
    room = available_bytes()
    if room is None:
        return None, "unknown"
    return int(MEMORY_FRACTION * room), f"available ({MEMORY_FRACTION:.0%} of the free memory; --memory-limit sets it)"


def fits(net: Network, num_samples: int, limit_gb: float | None) -> tuple[bool, str]:
    """Whether the full MIP for `num_samples` images fits the memory limit, and the sentence saying so."""
    est = estimate_full(net, num_samples)
    limit, how = memory_limit(limit_gb)
    if limit is None:
        return True, f"{est.describe()}; the memory available is unknown"
    if est.bytes <= limit:
        return True, f"{est.describe()}, within the {_size(limit)} {how}"
    return False, f"{est.describe()}, more than the {_size(limit)} {how}"


def check_full(net: Network, num_samples: int, limit_gb: float | None, search: bool = False) -> None:
    """Refuse (ResourceError, one line) a full MIP that would not fit."""
    ok, why = fits(net, num_samples, limit_gb)
    if not ok:
        fewer = "fewer calibration images than --search's" if search else "fewer --num-samples"
        raise ResourceError(f"{why}: use --mode decoupled or {fewer}")


def _size(nbytes: int) -> str:
    return f"{nbytes / GB:.2g} GB" if nbytes >= GB else f"{nbytes / 1e6:.0f} MB"


def _count(n: int) -> str:
    """1,234,567 -> '1.2e6'; small counts in full."""
    if n < 10**6:
        return f"{n:,}"
    exponent = len(str(int(n))) - 1
    return f"{n / 10**exponent:.2g}e{exponent}"


# ---------------------------------------------------------------------------------------------------
# MemoryError -> one line

ADVICE = {"score": "use --mode decoupled or fewer --num-samples",
          "select": "give fewer --eval-data images",
          "validate": "give fewer --data / --eval-data images",
          "load": "the model or the data do not fit in memory"}


class _StageTracker:
    """Passes progress calls on, remembering the stage that started last."""

    def __init__(self, inner):
        self.inner, self.stage = inner, None

    def start(self, stage: str, *args, **kwargs) -> None:
        self.stage = stage
        if self.inner is not None:
            self.inner.start(stage, *args, **kwargs)

    def done(self, *args, **kwargs) -> None:
        if self.inner is not None:
            self.inner.done(*args, **kwargs)

    def note(self, message: str) -> None:
        if self.inner is not None:
            self.inner.note(message)


def out_of_memory_message(stage: str | None, exc: BaseException) -> str:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "an allocation failed"
    where = f" in the {stage} stage" if stage else ""
    advice = ADVICE.get(stage or "", "free memory or give smaller inputs")
    return f"out of memory{where} ({detail}): {advice}; nothing was written"


def memory_errors_as_one_line(fn):
    """Decorator for optimize(): a MemoryError anywhere inside becomes a ResourceError naming the stage."""
    @functools.wraps(fn)
    def wrapper(*args, progress=None, **kwargs):
        tracker = _StageTracker(progress)
        try:
            return fn(*args, progress=tracker, **kwargs)
        except MemoryError as exc:
            raise ResourceError(out_of_memory_message(tracker.stage, exc)) from None
    return wrapper
