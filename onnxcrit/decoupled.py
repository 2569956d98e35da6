"""Decoupled mode (METHOD.md section 5): one OAMIP per block on an auxiliary classifier head, in parallel.

A block is a scored linear layer with what follows it up to the next linear layer (ReLU, pooling); the
reshapes before the next linear layer belong to that layer's input. For each block:

1. Head. A multinomial logistic regression (numpy + scipy L-BFGS) on the block's output over the whole
   user data file: for conv blocks on the global average of each channel (`head="gap"`, the default) or on
   the map average-pooled to 2 x 2 (`head="pool2"`: more accurate heads on early blocks, but masks no better
   on VGG-11, benchmarks/results/bench_vgg_heads.md). The last block needs no fitted head: the network's own
   output layer follows it, so its sub-network is the network's exact tail.
2. Sub-network. input = the scored layer's pre-activations on the calibration images (the unpruned
   network's, so the blocks are independent), a 1 x 1 identity Conv / identity Dense that carries the
   layer's scores, the block's ReLU and pooling, then the head (AvgPool + Reshape + Dense) as the output
   layer, which is not scored. With a tiny eps the MIP of the full network would treat these
   pre-activations as constants too; feeding them as the input spares building the layer's (large) sparse
   weight matrix only to multiply constants. The input box is eps times the largest L1 norm of a unit's
   incoming weights: the interval radius an eps box around the block's input gives, taken uniformly.
3. One `compute_scores` call per block, with the calibration images chosen once for the whole network.

The per-block calls are independent tasks (`BlockTask` -> `solve_block` -> `BlockResult`, all picklable
and module-level), run by an executor: anything with `map(fn, tasks)` returning results in task order.
`local_executor` gives threads (each `compute_scores` solves in its own child process, so threads give
parallel solves), processes, or a serial loop; a cluster backend (Ray, Dask) is one more such object.

Deadline: the solve phase gets `time_limit` seconds in all. With B blocks on W workers each block gets the
share T / ceil(B / W), capped by the time left when it starts: with tasks taken in order by the next free
worker, block j starts by floor(j / W) shares in, so the last one ends by T even if every block used its whole
share. The deadline counts from the start of the call: T is what the heads' preparation left of `time_limit`,
and the share bounds each block's build and solve together (compute_scores), as in full mode.
"""
from __future__ import annotations

import math
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass, replace, field
from typing import Any, Iterable, Iterator

import numpy as np

from .bounds import interval_bounds
from .calibration import choose_calibration
from .errors import InputError, SolveError
from .options import executor_ok
from .ir import INPUT, KINDS, AvgPool, Conv, Dense, Network, Reshape
from .scoring import ScoreResult, compute_scores

MODES = ("full", "decoupled", "auto")
HEADS = ("gap", "pool2")
EXECUTORS = ("threads", "processes", "serial", "ray")  # "ray:ADDRESS" joins a running Ray cluster
# auto picks decoupled when the full MIP would multiply more than this many weights (calibration images x
# MACs per image): the full build holds the linear maps of every image (sparse Kronecker products), and its
# memory and time grow with it. Measured on LeNet-5 (benchmarks/vgg.py, LP): 2.8M -> 0.7 s, 0.2 GB;
# 56M -> 9.5 s, 1.2 GB (about 20 MB per million); VGG-11 at 32 x 32 with 10 images: 1.5G, about 30 GB.
AUTO_MACS = 100_000_000
# ... or when the interval bounds of the full problem leave too many ReLU inputs unstable: bounds widen with
# depth, and measured (10 images, eps 1e-5) LeNet-5 has 6, a 784-300-100 MLP 2, while a 13-conv fire-module net
# on MNIST (4.8M MACs) has 78k and its full LP (279k columns, 23M nonzeros) was not solved in 300 s
AUTO_UNSTABLE = 10_000
MIN_SOLVE_SECONDS = 0.5  # a block with less time than this is not started (a solver process takes ~0.3 s)
# worse statuses last: the merged status is the worst block's
_STATUS_ORDER = ("optimal", "feasible_at_deadline", "no_solution", "infeasible")


# ---------------------------------------------------------------------------------------------------
# blocks


@dataclass(frozen=True)
class Block:
    """layers[position:stop] of the network: the scored layer, its ReLU and pooling.

    On a branching graph a block is one channel group seen at one layer output (`position`: the last producer or
    residual Add of the group that a ReLU reads, `tail`: that ReLU); `channels` gives the channel there of each
    of the group's units, and the scores are keyed by the group's `key`. Blocks end at merge points: the head
    reads the group's channels only."""

    name: str
    position: int
    stop: int
    last: bool  # the output layer follows: the network's own tail is the head
    key: int = -1  # the group the scores belong to (-1: the layer at `position`, on a chain)
    tail: tuple[int, ...] | None = None  # the layers applied after `position` (None: position + 1 .. stop - 1)
    channels: tuple[int, ...] | None = None  # channel at `position` of each unit (None: unit u is channel u)

    @property
    def group(self) -> int:
        return self.position if self.key < 0 else self.key


def split_blocks(net: Network) -> list[Block]:
    """One block per scored layer (on a branching graph: per channel group), in network order."""
    if not net.is_chain():
        return _group_blocks(net)
    linear = net.linear_indices()
    blocks = []
    for j, k in enumerate(net.scored_indices()):
        stop = linear[j + 1]
        while stop - 1 > k and isinstance(net.layers[stop - 1], Reshape):
            stop -= 1
        blocks.append(Block(net.layers[k].name, k, stop, last=(j + 1 == len(linear) - 1)))
    return blocks


def _group_blocks(net: Network) -> list[Block]:
    blocks = []
    for g in net.deps.prunable():
        points = [p for p in sorted(g.values) if p >= 0 and (p in g.producers or p in g.coupled or
                                                              KINDS[net.layers[p].kind].merge)
                  and all(len(ch) == 1 for ch in g.values[p])]
        relus = {p: [j for j in net.consumers_of(p) if KINDS[net.layers[j].kind].activation] for p in points}
        read = [p for p in points if relus[p]]
        point = read[-1] if read else g.key
        tail = (relus[point][0],) if relus.get(point) else ()
        blocks.append(Block(net.layers[g.key].name, point, (tail or (point,))[-1] + 1, last=False, key=g.key,
                            tail=tail, channels=tuple(int(ch[0]) for ch in g.values[point])))
    return blocks


def full_problem_size(net: Network, num_samples: int) -> int:
    """Size measure of the full MIP: calibration images x multiply-accumulates per image."""
    return int(num_samples) * int(net.macs)


def choose_mode(net: Network, num_samples: int, x: np.ndarray | None = None,
                eps: float = 1e-5) -> tuple[str, str]:
    """("full" | "decoupled", why) for mode auto. x: calibration images; when given, a network whose interval
    bounds on them leave more than AUTO_UNSTABLE ReLU inputs unstable goes decoupled too (each would be a
    binary, or a relaxed one, of the full problem)."""
    size = full_problem_size(net, num_samples)
    what = f"{num_samples} calibration images x {net.macs:,} MACs = {size:,}"
    if size > AUTO_MACS:
        return "decoupled", f"{what}, above {AUTO_MACS:,}: one MIP per block"
    if x is not None and len(x):
        unstable = unstable_inputs(net, np.asarray(x)[:num_samples], eps)
        if unstable > AUTO_UNSTABLE:
            return "decoupled", (f"{unstable:,} ReLU inputs unstable on {min(len(x), num_samples)} calibration "
                                 f"images (interval bounds widen with depth), above {AUTO_UNSTABLE:,}: one MIP "
                                 "per block")
    return "full", f"{what}, at most {AUTO_MACS:,}: one MIP"


def unstable_inputs(net: Network, x: np.ndarray, eps: float) -> int:
    """How many (image, element) ReLU inputs have interval bounds on both sides of 0 for the boxes x +- eps."""
    bounds = interval_bounds(net, x, eps)
    count = 0
    for i, layer in enumerate(net.layers):
        if KINDS[layer.kind].activation:
            p = net.inputs_of(i)[0]
            if p >= 0:
                count += int(np.count_nonzero((bounds.lower[p] < 0) & (bounds.upper[p] > 0)))
    return count


def default_workers() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------------
# heads


@dataclass
class Head:
    """The output layer of a block's sub-network: pooling layers, then a Dense on their output."""

    kind: str  # gap | pool2 | flat | network
    pool: list  # IR layers from the block output to the Dense input (AvgPool, Reshape)
    dense: Dense
    accuracy: float  # percent, on the data it was fitted on (for "network": the whole network's)


def head_pooling(name: str, out_shape: tuple[int, ...], kind: str) -> tuple[list, str]:
    """IR layers turning a block output into head features, and the kind actually used."""
    if len(out_shape) != 3:
        return [Reshape(f"{name}/head_flatten", tuple(out_shape), (int(np.prod(out_shape)),))], "flat"
    c, h, w = out_shape
    grid = 2 if kind == "pool2" and h % 2 == 0 and w % 2 == 0 and h >= 2 else 1
    kernel = (h // grid, w // grid)
    pool = AvgPool(f"{name}/head_pool", (c, h, w), kernel, kernel)
    return [pool, Reshape(f"{name}/head_flatten", pool.out_shape, (c * grid * grid,))], ("gap" if grid == 1
                                                                                         else "pool2")


def fit_logistic(features: np.ndarray, y: np.ndarray, classes: int, l2: float = 1e-3,
                 max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression (L2 on the weights of standardised features), by L-BFGS.

    Returns (weight [classes, d], bias [classes]) on the raw features. Deterministic.
    """
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    f = np.asarray(features, dtype=np.float64)
    mean = f.mean(axis=0)
    scale = f.std(axis=0)
    scale[scale < 1e-12] = 1.0  # constant features (dead units) carry no information
    z = (f - mean) / scale
    m, d = z.shape
    target = np.eye(classes)[np.asarray(y, dtype=np.int64)]

    def loss(theta):
        W = theta[:classes * d].reshape(classes, d)
        b = theta[classes * d:]
        logp = log_softmax(z @ W.T + b, axis=1)
        p = np.exp(logp)
        value = -np.sum(target * logp) / m + 0.5 * l2 * np.sum(W * W)
        g = (p - target) / m
        return value, np.concatenate([(g.T @ z + l2 * W).ravel(), g.sum(axis=0)])

    theta = minimize(loss, np.zeros(classes * (d + 1)), jac=True, method="L-BFGS-B",
                     options={"maxiter": int(max_iter)}).x
    W = theta[:classes * d].reshape(classes, d) / scale
    b = theta[classes * d:] - W @ mean
    return W, b


def block_features(net: Network, blocks: list[Block], x: np.ndarray, pools: list[list], batch_size: int = 64,
                   workers: int = 1) -> tuple[list[np.ndarray], np.ndarray]:
    """Head features of every block over the images x, and the network's logits, in one pass streamed in
    batches (only the pooled maps stay in memory). Batches go to `workers` threads (numpy's kernels release
    the GIL: 1.8x with 2 threads measured on VGG-11); the result does not depend on `workers`."""
    ends = {b.stop - 1: j for j, b in enumerate(blocks)}

    last_use = {p: i for i in range(len(net.layers)) for p in net.inputs_of(i)}

    def one_batch(start: int):
        values = {INPUT: np.asarray(x[start:start + batch_size], dtype=np.float64).reshape(-1, *net.input_shape)}
        feats = [None] * len(blocks)
        for i, layer in enumerate(net.layers):
            h = values[i] = layer.forward(*(values[p] for p in net.inputs_of(i)))
            for p in net.inputs_of(i):  # only what later layers read stays in memory
                if last_use.get(p) == i:
                    del values[p]
            if i in ends:
                f = h
                for p in pools[ends[i]]:
                    f = p.forward(f)
                feats[ends[i]] = f
        return feats, h

    starts = range(0, len(x), batch_size)
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxcrit-features") as pool:
            parts = list(pool.map(one_batch, starts))
    else:
        parts = [one_batch(s) for s in starts]
    features = [np.concatenate([p[0][j] for p in parts], axis=0) for j in range(len(blocks))]
    return features, np.concatenate([p[1] for p in parts], axis=0)


def fit_heads(net: Network, blocks: list[Block], x: np.ndarray, y: np.ndarray, kind: str = "gap",
              batch_size: int = 64, workers: int = 1) -> list[Head]:
    """A head per block: fitted for all but the last, whose head is the network's own output layer."""
    pools, kinds = [], []
    for b in blocks:
        layers, used = ([], "network") if b.last else head_pooling(b.name, net.layers[b.stop - 1].out_shape, kind)
        pools.append(layers)
        kinds.append(used)
    fitted = [j for j, b in enumerate(blocks) if not b.last]
    feats, logits = block_features(net, [blocks[j] for j in fitted], x, [pools[j] for j in fitted], batch_size,
                                   workers)
    classes = net.num_classes
    y = np.asarray(y, dtype=np.int64)
    heads: list[Head] = []
    out_layer = net.layers[net.linear_indices()[-1]]
    for j, b in enumerate(blocks):
        if b.last:
            acc = float(np.mean(logits.argmax(axis=1) == y) * 100.0)
            heads.append(Head("network", [], out_layer, acc))
            continue
        f = feats[fitted.index(j)]
        W, bias = fit_logistic(f, y, classes)
        acc = float(np.mean((f @ W.T + bias).argmax(axis=1) == y) * 100.0)
        dense = Dense(f"{b.name}/head", W, bias, (f.shape[1],))
        heads.append(Head(kinds[j], pools[j], dense, acc))
    return heads


def block_network(net: Network, block: Block, head: Head) -> tuple[Network, float]:
    """The block's sub-network (identity scored layer + ReLU/pooling + head) and its eps factor."""
    layer = net.layers[block.position]
    shape = tuple(layer.out_shape)
    units = int(shape[0])
    if len(shape) == 3:
        eye = np.eye(units).reshape(units, units, 1, 1)
        scored = Conv(f"{layer.name}/scores", eye, np.zeros(units), shape)
    else:
        scored = Dense(f"{layer.name}/scores", np.eye(units), np.zeros(units), (units,))
    if block.tail is not None:
        tail = [net.layers[t] for t in block.tail]
    else:
        tail = net.layers[block.position + 1:] if block.last else net.layers[block.position + 1:block.stop]
    layers = [scored, *tail, *([] if block.last else [*head.pool, head.dense])]
    # a chain of its own: the copied layers read the one before them (decoupled mode takes chains only)
    layers = [replace(layer, inputs=(), output="") for layer in layers]
    sub = Network(layers=list(layers), input_name=f"{layer.name}/preactivation", input_shape=tuple(layer.out_shape),
                  logits_name=f"{block.name}/head")
    weight = net.layers[block.group].weight
    return sub, float(np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1).max(initial=0.0))


# ---------------------------------------------------------------------------------------------------
# tasks and executors


@dataclass
class BlockTask:
    """Everything one block's solve needs; picklable, so any executor can ship it."""

    index: int
    name: str
    position: int
    network: Network
    x: np.ndarray  # the scored layer's pre-activations on the calibration images
    y: np.ndarray
    options: dict  # compute_scores keyword arguments (eps already scaled)
    share: float  # seconds this block's solve may take at most
    deadline: float  # wall-clock time (time.time()) the whole solve phase must end by


@dataclass
class BlockResult:
    """One block's outcome: where it sits, how long it took, and its solve's own record (block layer at key 0)."""

    index: int
    name: str
    position: int
    units: int
    seconds: float
    time_limit: float
    record: ScoreResult

    @property
    def scores(self) -> np.ndarray | None:
        return self.record.scores.get(0)


def solve_block(task: BlockTask) -> BlockResult:
    """One block's MIP; never raises for a solve without solution (the status says so)."""
    start = time.perf_counter()
    limit = min(task.share, task.deadline - time.time())
    units = task.network.layers[0].units
    if limit < MIN_SOLVE_SECONDS:  # not enough time left to start a solver process
        why = ("the global deadline had passed" if task.deadline - time.time() < MIN_SOLVE_SECONDS
               else f"its share of the time limit ({task.share:.3g} s) is too short")
        record = ScoreResult(scores={}, status="no_solution", objective=None, bound=None, gap=None, variables=0,
                             binaries=0, constraints=0, nonzeros=0, build_seconds=0.0, solve_seconds=0.0,
                             calibration_indices=np.arange(len(task.x)), skipped=[],
                             solver=task.options.get("solver", "auto"), relaxed=bool(task.options.get("relax")),
                             message=f"not solved: {why}")
        return BlockResult(task.index, task.name, task.position, units, 0.0, max(limit, 0.0), record)
    record = compute_scores(task.network, task.x, task.y, calibration=np.arange(len(task.x)), time_limit=limit,
                            raise_on_failure=False, **task.options)
    return BlockResult(task.index, task.name, task.position, units, time.perf_counter() - start, limit, record)


class SerialExecutor:
    """Runs the tasks one after the other in this thread."""

    def map(self, fn, tasks: Iterable) -> Iterator:
        return map(fn, tasks)


def map_shared(executor, fn, shared, tasks: Iterable) -> list:
    """[fn(shared, task) for task in tasks] on `executor`, in task order. On Ray `shared` (which may be large: a
    model, a network, cached activations) goes to the object store once, not with every task; a thread pool
    or serial executor shares it in memory."""
    if isinstance(executor, RayExecutor):
        return executor.map_shared(fn, shared, tasks)
    return list(executor.map(partial(fn, shared), tasks))


def check_executor(kind: str) -> str:
    """'threads', 'processes', 'serial', 'ray' or 'ray:ADDRESS'; anything else is an InputError."""
    if not executor_ok(kind):
        raise InputError(f"unknown executor {kind!r}; expected threads, processes, serial, ray or ray:ADDRESS")
    return kind


class RayExecutor:
    """Block solves as Ray tasks (one CPU each); results come back in task order."""

    def __init__(self, ray) -> None:
        self.ray = ray

    def map(self, fn, tasks: Iterable) -> Iterator:
        remote = self.ray.remote(num_cpus=1)(fn)
        return iter(self.ray.get([remote.remote(task) for task in tasks]))

    def map_shared(self, fn, shared, tasks: Iterable) -> list:
        ref = self.ray.put(shared)
        remote = self.ray.remote(num_cpus=1)(fn)
        return self.ray.get([remote.remote(ref, task) for task in tasks])


@contextmanager
def ray_executor(address: str | None, workers: int):
    """Ray on this machine (`workers` CPUs) or on the cluster at `address` (whose nodes must have onnxcrit
    installed). A Ray instance started here is shut down afterwards; one already running is reused."""
    try:
        import ray
    except ImportError:
        raise InputError("the ray executor needs Ray: pip install 'onnxcrit[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if address and address != "auto":
            _reachable(address)  # ray.init retries an unreachable address for minutes, then exits the process
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            ray.init(address=address, **kwargs) if address else ray.init(num_cpus=workers, **kwargs)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - connection errors come in many types
            raise InputError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        yield RayExecutor(ray)
    finally:
        if started:
            ray.shutdown()


def _reachable(address: str, timeout: float = 5.0) -> None:
    """One TCP connection to the cluster's head (HOST:PORT, or ray://HOST:PORT) within `timeout` seconds."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot start or reach Ray at {address}: {exc.strerror or exc}") from None


@contextmanager
def local_executor(workers: int, kind: str = "threads"):
    """An executor: `workers` threads (default), processes, serial (workers 1), or Ray ('ray' on this machine,
    'ray:ADDRESS' on a cluster)."""
    check_executor(kind)
    if kind.startswith("ray"):
        with ray_executor(kind[4:] or None, workers) as ex:
            yield ex
        return
    if workers == 1 or kind == "serial":
        yield SerialExecutor()
    elif kind == "threads":
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="onnxcrit-block")
        try:
            yield pool
        except BaseException:  # Ctrl-C: drop the queued blocks and stop the running solves now
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_solvers()
            raise
        finally:
            pool.shutdown(wait=True)
    else:
        import multiprocessing

        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool


def _stop_solvers() -> None:
    """Kill the solver processes this process started (each leads its own process group, see solve.py).

    Worker threads wait on their solver until its deadline; a KeyboardInterrupt reaches the main thread
    only, so without this an interrupted run would wait for every running solve. Linux (/proc) only.
    """
    import signal

    me = os.getpid()
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            if parent != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"onnxcrit.solve" not in f.read():
                    continue
            os.killpg(int(entry), signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            continue


# ---------------------------------------------------------------------------------------------------
# the stage


@dataclass
class DecoupledScoreResult(ScoreResult):
    """A ScoreResult merged over the blocks, with the record of each block."""

    blocks: list[dict] = field(default_factory=list)
    workers: int = 1
    head: str = "gap"


def decoupled_scores(net: Network, x: np.ndarray, y: np.ndarray, *, eps: float = 1e-5, lam: float = 5.0,
                     loss: str = "hinge", margin: float = 1.0, sparsity: str = "mean", relax: bool = False,
                     num_samples: int = 10, seed: int = 0, solver: str = "auto", time_limit: float = 300.0,
                     workers: int | None = None, executor: Any = None, executor_kind: str = "threads",
                     head: str = "gap", calibration: np.ndarray | None = None, require_all_classes: bool = False,
                     raise_on_failure: bool = True, batch_size: int = 64) -> DecoupledScoreResult:
    """Score every prunable unit with one OAMIP per block (see the module docstring).

    x, y: the user's data; the heads are fitted on all of it, the calibration images are chosen from it
    once (or given by `calibration`) and shared by every block. `executor`: any object with
    `map(fn, tasks)`; by default a `local_executor(workers, executor_kind)`. `time_limit` bounds the whole
    call: the heads' preparation, then each block's build and solve. Returns the scores keyed by positions in `net.layers`, like `compute_scores`; raises
    SolveError when a block has no usable solution (the `result` attribute holds the record) unless
    `raise_on_failure` is False.
    """
    if head not in HEADS:
        raise InputError(f"unknown head {head!r}; expected one of {', '.join(HEADS)}")
    if not time_limit > 0:
        raise InputError(f"time_limit must be positive, got {time_limit}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    prep = time.perf_counter()
    deadline = time.time() + time_limit  # the heads' preparation counts too
    if calibration is None:
        indices, skipped = choose_calibration(net, x, y, num_samples, seed, require_all_classes)
    else:
        indices, skipped = np.asarray(calibration, dtype=np.int64), []
    x = np.asarray(x).reshape(len(x), *net.input_shape)
    y = np.asarray(y).astype(np.int64)
    blocks = split_blocks(net)
    if not blocks:
        raise InputError("the network has no prunable layer (only the output layer)")
    heads = fit_heads(net, blocks, x, y, head, batch_size, workers)
    acts = net.activations(x[indices])
    ys = y[indices]
    options = dict(lam=lam, loss=loss, margin=margin, sparsity=sparsity, relax=relax, seed=seed, solver=solver)
    prep_seconds = time.perf_counter() - prep

    rounds = math.ceil(len(blocks) / workers)
    share = max(deadline - time.time(), 0.0) / rounds  # what the preparation left, shared by the rounds
    tasks = []
    for j, (b, h) in enumerate(zip(blocks, heads)):
        sub, radius = block_network(net, b, h)
        tasks.append(BlockTask(j, b.name, b.position, sub, acts[b.position], ys, dict(options, eps=eps * radius),
                               share, deadline))
    clock = time.perf_counter()
    if executor is not None:
        results = list(executor.map(solve_block, tasks))
    else:
        with local_executor(workers, executor_kind) as ex:
            results = list(ex.map(solve_block, tasks))
    wall = time.perf_counter() - clock
    return _merge(net, results, heads, indices, skipped, prep_seconds, wall, workers, head, relax, time_limit,
                  raise_on_failure, blocks)


def _merge(net, results, heads, indices, skipped, prep_seconds, wall, workers, head, relax, time_limit,
           raise_on_failure, blocks) -> DecoupledScoreResult:
    results = sorted(results, key=lambda r: r.index)

    def unit_scores(r) -> np.ndarray:  # a block's scores per channel at its position -> per unit of its group
        b = blocks[r.index]
        return r.scores if b.channels is None else np.asarray(r.scores)[list(b.channels)]

    records = [r.record for r in results]
    status = max((rec.status for rec in records), key=_STATUS_ORDER.index)
    failed = [r for r in results if r.scores is None]
    rows = []
    for r, h in zip(results, heads):
        rows.append({"name": r.name, "units": r.units, "variables": r.record.variables,
                     "binaries": r.record.binaries, "constraints": r.record.constraints, "status": r.record.status, "seconds": round(r.seconds, 3),
                     "time_limit": round(r.time_limit, 3), "head": h.kind,
                     "head_accuracy": round(h.accuracy, 4)})
    origins: dict[str, int] = {}
    for rec in records:
        for k, v in rec.binaries_by_origin.items():
            origins[k] = origins.get(k, 0) + int(v)
    known = [rec for rec in records if rec.objective is not None]
    message = "; ".join(f"block '{r.name}': {r.record.message}" for r in failed)
    if failed and status == "no_solution":
        share = max(time_limit - prep_seconds, 0.0) / math.ceil(len(results) / workers)
        message += (f"; after {prep_seconds:.1f} s of preparation each block's build and solve may take {share:.3g} s "
                    f"of time_limit={time_limit:g} s ({len(results)} blocks on {workers} workers): raise time_limit "
                    f"or workers, or relax")
    out = DecoupledScoreResult(
        scores={blocks[r.index].group: unit_scores(r) for r in results if r.scores is not None}, status=status,
        objective=sum(rec.objective for rec in known) if len(known) == len(records) else None,
        bound=sum(rec.bound for rec in records) if all(rec.bound is not None for rec in records) else None,
        gap=max((rec.gap for rec in records if rec.gap is not None), default=None),
        variables=sum(rec.variables for rec in records), binaries=sum(rec.binaries for rec in records),
        constraints=sum(rec.constraints for rec in records), nonzeros=sum(rec.nonzeros for rec in records),
        build_seconds=prep_seconds, solve_seconds=wall, calibration_indices=np.asarray(indices), skipped=skipped,
        solver=",".join(sorted({rec.solver for rec in records})), relaxed=relax, message=message,
        unit_stats={blocks[r.index].group: r.record.unit_stats.get(0, {}) for r in results}, binaries_by_origin=origins, blocks=rows,
        workers=workers, head=head)
    if raise_on_failure and not out.ok:
        err = SolveError(message or f"decoupled solve ended with status {status}")
        err.result = out
        raise err
    return out
