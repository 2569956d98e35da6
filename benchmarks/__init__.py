"""onnxcrit's benchmarks and experiments (not installed with the package; run from the repository root).

Each is a module run with `python -m benchmarks.NAME [--help]`; the tables they write are in benchmarks/results/
and quoted in docs/benchmarks.md:

- suite: onnxcrit against L1, L2, Torch-Pruning, activation, random and critical at equal counts (~8 min)
- budget_search: the accuracy-budget search measured by numpy float64 against onnxruntime float32
- scores: the scoring stage (build / solve time, formulation and solver variants)
- latency: latency against MACs after pruning, and what --round-to does about it
- compensation: bias compensation on the digits examples
- cross_dataset: a MNIST mask retrained on KMNIST (the "lucky sub-network" test; needs torch)
- vgg: decoupled mode on VGG-11 / 4-class CIFAR-10 and LeNet-5 (needs torch)
- compression: every criterion with the same reconstruction and its own confirmed budget search (~30 min)
- branching: ResNet-20 and a fire-module net (residual Add, channel Concat) on MNIST and 4-class CIFAR-10 against
  L1 and Torch-Pruning's magnitude criterion (needs torch and the bench extra)
- tp_importance: self-test of the Torch-Pruning baseline (needs the bench extra)

Shared pieces: models (data, the MNIST models, the training loop), methods (the baseline criteria, measured
runs in fresh processes), common (where results go, onnxruntime logits). They use onnxcrit's public API only
(`from onnxcrit import ...`, see onnxcrit/__init__.py).
"""
