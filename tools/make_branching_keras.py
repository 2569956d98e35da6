#!/usr/bin/env python
"""Build the Keras 3 / tf2onnx files of tests/data/branching/: a residual net, a fire-module (Concat) net and a
depthwise-separable net, trained on scikit-learn's digits like tools/make_branching_models.py's torch files.

tensorflow-cpu, tf2onnx and keras do not share numpy/protobuf pins with the project's venv, so this script runs
in a separate one (dev tools only, nothing in the package needs them)::

    python3 -m venv /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0 tf2onnx==1.17.0 keras==3.15.1 onnx==1.23.2 \\
        onnxruntime==1.32.0 scikit-learn
    /tmp/tfvenv/bin/python -m tools.make_branching_keras          # from the repository root
    .venv/bin/python -m tools.make_branching_models --readme       # checks all files, rewrites README.md

Keras 3 models cannot go through ``tf2onnx.convert.from_keras`` (KeyError on ``keras_tensor_..``), so each is
wrapped in a ``tf.function`` (``training=False``) and converted with ``tf2onnx.convert.from_function`` at opset
17, input ``input`` [batch, 8, 8, 1] (NHWC, as Keras writes it) with a free batch axis.  The graph output keeps
tf2onnx's name.  Data: the split and calibration pick of tools/make_published_patterns.py; ``x`` is NHWC
float32 ``[N, 8, 8, 1]``.  Training: Adam 3e-3, batch 32, EPOCHS epochs, sparse cross-entropy on logits.

Checks: onnxruntime's logits equal Keras's within 1e-4 of the largest |logit|; held-out accuracy >= 90 %;
``onnx.checker.check_model(full_check=True)``.  Deterministic: fixed seeds, one thread, TF op determinism,
PYTHONHASHSEED=0 and tf2onnx's name counter reset (``sha256sum tests/data/branching/keras3_*``).

Usage: python -m tools.make_branching_keras [--out DIR] [--only NAME ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
           "TF_NUM_INTEROP_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_OUT = os.path.join(ROOT, "tests", "data", "branching")
SEED = 0
OPSET = 17
EPOCHS = 30
REL_TOL = 1e-4

KERAS = "Keras 3.15.1 (tensorflow-cpu 2.21.0) in a `tf.function` -> tf2onnx 1.17.0 `from_function`"
# name -> (architecture, exporter, trainable parameters in Keras: checked when the model is built, read by
# tools/make_branching_models.py --readme, which has no tensorflow)
MANIFEST = {
    "keras3_resnet": (
        "Keras ResNet (NHWC): stem Conv2D 8 3x3 (no bias) + BatchNorm + ReLU, block [Conv2D 8 + BN + ReLU, "
        "Conv2D 8 + BN, Add(+ x), ReLU], block with a 1x1 stride-2 Conv2D + BN shortcut [Conv2D 16 stride 2 + BN "
        "+ ReLU, Conv2D 16 + BN, Add, ReLU], GlobalAveragePooling2D, Dense 10", KERAS, 5122),
    "keras3_fire": (
        "Keras SqueezeNet fire modules (NHWC): Conv2D 16 3x3 ReLU, fire(s4, e8+8), MaxPooling2D 2, "
        "fire(s8, e16+16), GlobalAveragePooling2D, Dense 10 (fire = Conv2D 1x1 ReLU -> [Conv2D 1x1 ReLU, "
        "Conv2D 3x3 ReLU] -> Concatenate on the channel axis -1)", KERAS, 2342),
    "keras3_mobilenet": (
        "Keras MobileNet depthwise-separable (NHWC): Conv2D 16 3x3 (no bias) + BN + ReLU, [DepthwiseConv2D 3x3 "
        "+ BN + ReLU, Conv2D 32 1x1 + BN + ReLU], [DepthwiseConv2D 3x3 stride 2 'same' + BN + ReLU, Conv2D 32 "
        "1x1 + BN + ReLU], GlobalAveragePooling2D, Dense 10", KERAS, 2698),
}


def models(keras):
    L = keras.layers

    def conv_bn(x, filters, k=3, stride=1, relu=True, name=""):
        x = L.Conv2D(filters, k, strides=stride, padding="same", use_bias=False, name=name)(x)
        x = L.BatchNormalization(name=name + "_bn")(x)
        return L.ReLU(name=name + "_relu")(x) if relu else x

    def resnet():
        inp = keras.Input((8, 8, 1), name="input")
        x = conv_bn(inp, 8, name="stem")
        h = conv_bn(x, 8, name="b1_conv1")
        h = conv_bn(h, 8, relu=False, name="b1_conv2")
        x = L.ReLU(name="b1_out")(L.Add(name="b1_add")([h, x]))
        h = conv_bn(x, 16, stride=2, name="b2_conv1")
        h = conv_bn(h, 16, relu=False, name="b2_conv2")
        s = conv_bn(x, 16, k=1, stride=2, relu=False, name="b2_down")
        x = L.ReLU(name="b2_out")(L.Add(name="b2_add")([h, s]))
        x = L.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inp, L.Dense(10, name="fc")(x), name="resnet")

    def fire(x, s, e, name):
        q = L.Conv2D(s, 1, activation="relu", name=name + "_squeeze")(x)
        a = L.Conv2D(e, 1, activation="relu", name=name + "_expand1x1")(q)
        b = L.Conv2D(e, 3, padding="same", activation="relu", name=name + "_expand3x3")(q)
        return L.Concatenate(axis=-1, name=name + "_concat")([a, b])

    def squeezenet():
        inp = keras.Input((8, 8, 1), name="input")
        x = L.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inp)
        x = L.MaxPooling2D(2, name="pool1")(fire(x, 4, 8, "fire1"))
        x = fire(x, 8, 16, "fire2")
        x = L.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inp, L.Dense(10, name="fc")(x), name="fire")

    def mobilenet():
        inp = keras.Input((8, 8, 1), name="input")
        x = conv_bn(inp, 16, name="stem")
        for i, (filters, stride) in enumerate(((32, 1), (32, 2)), 1):
            x = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
            x = L.ReLU(name=f"dw{i}_relu")(L.BatchNormalization(name=f"dw{i}_bn")(x))
            x = conv_bn(x, filters, k=1, name=f"pw{i}")
        x = L.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inp, L.Dense(10, name="fc")(x), name="mobilenet")

    return {"keras3_resnet": resnet, "keras3_fire": squeezenet, "keras3_mobilenet": mobilenet}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", nargs="*", help="build only these names")
    args = ap.parse_args(argv)
    if os.environ.get("PYTHONHASHSEED") != "0":  # tf2onnx dedups equal constants in set order: fix str hashing
        os.execve(sys.executable, [sys.executable, "-m", "tools.make_branching_keras", *sys.argv[1:]],
                  {**os.environ, "PYTHONHASHSEED": "0"})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnx
    import tensorflow as tf
    import tf2onnx
    import keras

    from tools.make_published_patterns import MIN_ACC, load_split, ort_outputs, write_data

    tf.get_logger().setLevel("ERROR")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_op_determinism()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    only = set(args.only) if args.only else None
    if only and only - set(MANIFEST):
        raise SystemExit(f"unknown names: {sorted(only - set(MANIFEST))}")
    x_tr, y_tr, x_te, y_te = load_split()
    shape = (8, 8, 1)
    t0 = time.perf_counter()
    for i, (name, factory) in enumerate(models(keras).items()):
        if only is not None and name not in only:
            continue
        keras.utils.set_random_seed(SEED + 20 + i)
        model = factory()
        params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
        if params != MANIFEST[name][2]:
            raise SystemExit(f"{name}: {params} trainable parameters, MANIFEST says {MANIFEST[name][2]}")
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        t1 = time.perf_counter()
        model.fit(x_tr.reshape((-1,) + shape), y_tr, epochs=EPOCHS, batch_size=32, shuffle=True, verbose=0)
        spec = (tf.TensorSpec((None,) + shape, tf.float32, name="input"),)
        tf2onnx.utils.INTERNAL_NAME = 1  # the counter behind tf2onnx's "__N" names: same names with --only
        fn = tf.function(lambda x, m=model: m(x, training=False), input_signature=spec)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=OPSET)
        path = os.path.join(out, name + ".onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        onnx.checker.check_model(path, full_check=True)
        write_data(out, name, shape, x_tr, y_tr, x_te, y_te)
        ev = np.load(os.path.join(out, name + "_eval.npz"))
        ref = model.predict(ev["x"], batch_size=450, verbose=0)
        got = ort_outputs(path, ev["x"])
        err, scale = float(np.abs(ref - got).max()), float(np.abs(ref).max())
        acc = float((got.argmax(1) == ev["y"]).mean())
        print(f"{name}: trained in {time.perf_counter() - t1:.1f}s, held-out acc {acc:.4f}, "
              f"|onnxruntime - keras| max {err:.1e} (logit scale {scale:.1f})", flush=True)
        if not err <= REL_TOL * scale or acc < MIN_ACC:
            raise SystemExit(f"{name}: check failed")
    print(f"wrote {out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
