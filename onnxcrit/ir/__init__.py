"""The IR: layer kinds (kinds.py, one registry), the network as a DAG keyed by tensor names (graph.py) and the
channel-dependency map that says which units go together (groups.py).

Every shape is per sample (no batch axis). Linear layers (`Dense`, `Conv`) keep, for their output units and
their input units, where their numbers live in the original ONNX graph (`ParamRef`), so the rewrite can shrink
the right tensors without re-deriving anything. Weights are float64 with BatchNormalization and Gemm's
alpha/beta already folded in.
"""
from .graph import Network
from .groups import INPUT, Dependencies, Group, dependencies
from .kinds import (INPUT_STAGE_KINDS, KINDS, LINEAR_KINDS, Add, Affine, AvgPool, Concat, Conv, Dense, Kind, Layer,
                    MaxPool, ParamRef, Relu, Reshape, Transpose, kind_of, patch_indices)

__all__ = ["Network", "INPUT", "Dependencies", "Group", "dependencies", "INPUT_STAGE_KINDS", "KINDS", "LINEAR_KINDS",
           "Add", "Affine", "AvgPool", "Concat", "Conv", "Dense", "Kind", "Layer", "MaxPool", "ParamRef", "Relu",
           "Reshape", "Transpose", "kind_of", "patch_indices"]
