"""The channel-dependency map: which units must go together in branching graphs (residual Add, Concat,
depthwise and grouped convolutions), on files written by torch's exporters, and one group per prunable layer
on every chain model the front end reads."""
from __future__ import annotations

import pytest

from onnxcrit.deps import dependency_groups
from onnxcrit.frontend import load_model, load_network

from .corpus import EXPORTED, PUBLISHED, ROOT

BRANCHING = ROOT / "tests" / "data" / "branching"


def groups_of(name):
    return {g.producers: g for g in dependency_groups(load_model(BRANCHING / f"{name}.onnx"))}


def test_residual_stage_is_one_group():
    groups = groups_of("torch_legacy_resnet_basic")
    stage = groups[("/conv1/Conv", "/layers/layers.0/conv2/Conv", "/layers/layers.1/conv2/Conv")]
    assert stage.units == 8 and stage.frozen is None
    assert set(stage.consumers) == {"/fc/Gemm", "/layers/layers.0/conv1/Conv", "/layers/layers.1/conv1/Conv"}
    inner = groups[("/layers/layers.0/conv1/Conv",)]
    assert inner.units == 8 and inner.consumers == ("/layers/layers.0/conv2/Conv",)


def test_downsample_shortcut_joins_the_stage_it_feeds():
    groups = groups_of("torch_legacy_resnet_downsample")
    stage = groups[("/layers/layers.0/conv2/Conv", "/layers/layers.0/downsample/downsample.0/Conv",
                    "/layers/layers.1/conv2/Conv")]
    assert stage.units == 16 and stage.frozen is None
    stem = groups[("/conv1/Conv",)]  # read by the block's first conv and by the shortcut, not coupled to them
    assert set(stem.consumers) == {"/layers/layers.0/conv1/Conv", "/layers/layers.0/downsample/downsample.0/Conv"}


def test_dynamo_and_legacy_exports_give_the_same_groups():
    for arch in ("resnet_basic", "resnet_downsample"):
        legacy = dependency_groups(load_model(BRANCHING / f"torch_legacy_{arch}.onnx"))
        dynamo = dependency_groups(load_model(BRANCHING / f"torch_dynamo_{arch}.onnx"))
        assert sorted((len(g.producers), g.units, g.frozen is None) for g in legacy) == \
            sorted((len(g.producers), g.units, g.frozen is None) for g in dynamo)


def test_concat_inputs_stay_independent_at_their_offsets():
    groups = groups_of("torch_legacy_squeezenet_dense")
    one, three = groups[("/fire2/expand1x1/Conv",)], groups[("/fire2/expand3x3/Conv",)]
    assert one.units == three.units == 16 and one.consumers == three.consumers == ("/fc/Gemm",)
    concat = [t for t in three.tensors if t in one.tensors]
    assert concat, "the Concat output carries both groups"
    assert one.tensors[concat[0]] == list(range(16)) and three.tensors[concat[0]] == list(range(16, 32))
    squeeze = groups[("/fire1/squeeze/Conv",)]
    assert set(squeeze.consumers) == {"/fire1/expand1x1/Conv", "/fire1/expand3x3/Conv"}


def test_depthwise_conv_couples_its_input_and_output():
    groups = groups_of("torch_legacy_mobilenet_dwsep")
    first = groups[("/dw1/dw1.0/Conv", "/stem/stem.0/Conv")]
    assert first.units == 16 and first.frozen is None
    assert set(first.consumers) == {"/dw1/dw1.0/Conv", "/pw1/pw1.0/Conv"}


def test_grouped_conv_and_outputs_are_frozen_with_a_reason():
    groups = groups_of("torch_legacy_grouped_conv")
    assert "grouped convolution '/conv2/Conv' (group 2)" in groups[("/conv1/Conv",)].frozen
    assert "graph output" in groups[("/fc/Gemm",)].frozen


def test_dense_residual_and_inception_branches():
    mlp = groups_of("torch_legacy_mlp_residual")
    assert mlp[("/fc1/Gemm", "/fc3/Gemm")].units == 32
    inception = groups_of("torch_legacy_inception")
    assert {p for p in inception if inception[p].frozen is None} == {
        ("/stem/Conv",), ("/b1/Conv",), ("/b2_reduce/Conv",), ("/b2/Conv",), ("/b3/Conv",)}


@pytest.mark.parametrize("path", EXPORTED + PUBLISHED, ids=lambda p: p.stem)
def test_a_chain_has_one_group_per_prunable_layer(path):
    """On every chain the front end reads, the map agrees with the IR: one unfrozen group per scored layer,
    made by that layer's node, with its unit count; the output layer's group is frozen."""
    net, model = load_network(path)
    groups = dependency_groups(model)
    free = [(g.producers, g.units) for g in groups if g.frozen is None]
    scored = [((net.layers[k].nodes[0] or net.layers[k].name,), net.layers[k].units) for k in net.scored_indices()]
    assert free == scored
