"""Choosing the calibration images: balanced over classes, correctly classified by the model."""
from __future__ import annotations

import numpy as np

from .errors import InputError


def choose_calibration(net, x: np.ndarray, y: np.ndarray, num_samples: int = 10, seed: int = 0,
                       require_all_classes: bool = False) -> tuple[np.ndarray, list[str]]:
    """Indices (sorted) of `num_samples` images of x, as even over the model's classes as possible, each
    classified correctly by `net`; and the reasons for what was passed over.

    Classes without any image in the data are noted and the balance is over the others (e.g. a 4-class
    subset of CIFAR-10), unless `require_all_classes`, which makes that an InputError.
    Within a class the images are visited in a seeded random order (deterministic for a seed); an image
    the model gets wrong is skipped and reported. Images never visited are not reported. When
    `num_samples` is not a multiple of the class count, the classes that get one more image are chosen
    with the same seed. A class short of correctly classified images hands its share to the others.
    Raises InputError for impossible requests.
    """
    x, y = _check(net, x, y, num_samples)
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    absent = sorted(set(range(net.num_classes)) - set(classes.tolist()))
    if absent and require_all_classes:
        raise InputError(f"no image of class {absent[0]} in the data: calibration needs every class of the "
                         f"model ({len(absent)} of {net.num_classes} missing)")
    skipped: list[str] = [f"class {c}: no images in the data" for c in absent]
    base, extra = divmod(num_samples, classes.size)
    quota = {int(c): base for c in classes}
    for c in rng.permutation(classes)[:extra]:
        quota[int(c)] += 1
    order = {int(c): rng.permutation(np.flatnonzero(y == c)) for c in classes}
    pos = {c: 0 for c in quota}
    chosen: dict[int, list[int]] = {c: [] for c in quota}

    def take(c: int, want: int) -> None:
        """Visit class c's images in order until `want` more correct ones are found or none are left."""
        while want > 0 and pos[c] < order[c].size:
            batch = order[c][pos[c]:pos[c] + max(4 * want, 32)]
            pred = net.predict(x[batch])
            for i, p in zip(batch, pred):
                pos[c] += 1
                if p == c:
                    chosen[c].append(int(i))
                    want -= 1
                    if want == 0:
                        return
                else:
                    skipped.append(f"image {int(i)} (class {c}): misclassified as {int(p)}")

    for c in quota:
        take(c, quota[c])
    empty = [c for c in quota if not chosen[c] and quota[c] > 0]
    if empty:
        raise InputError(f"no correctly classified image of class {empty[0]} in the data "
                         f"({int((y == empty[0]).sum())} images, all misclassified)")
    # classes that ran short hand their share to the others, in the seeded class order
    missing = sum(quota[c] - len(chosen[c]) for c in quota)
    for c in quota:
        if len(chosen[c]) < quota[c]:
            skipped.append(f"class {c}: only {len(chosen[c])} correctly classified images, "
                           f"{quota[c] - len(chosen[c])} taken from other classes")
    while missing > 0:
        before = missing
        for c in sorted(quota, key=lambda k: len(chosen[k])):
            if missing == 0:
                break
            had = len(chosen[c])
            take(c, 1)
            missing -= len(chosen[c]) - had
        if missing == before:
            raise InputError(f"only {num_samples - missing} correctly classified images in the data, "
                             f"{num_samples} requested")
    indices = np.sort(np.concatenate([np.array(v, dtype=np.int64) for v in chosen.values()]))
    return indices, skipped


def _check(net, x, y, num_samples):
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise InputError(f"labels must be one per image: {len(x)} images, labels of shape {y.shape}")
    size = int(np.prod(net.input_shape))
    if x.size != len(x) * size:
        raise InputError(f"images of shape {x.shape[1:]} do not fit the model input {net.input_shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise InputError("labels must be integers")
        y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= net.num_classes):
        raise InputError(f"labels must lie in 0..{net.num_classes - 1}, found {int(y.min())}..{int(y.max())}")
    if int(num_samples) != num_samples or num_samples < 1:
        raise InputError(f"num_samples must be a positive integer, got {num_samples}")
    if num_samples > len(x):
        raise InputError(f"{num_samples} calibration images requested, the data has {len(x)}")
    return x.reshape(len(x), *net.input_shape), y.astype(np.int64)
