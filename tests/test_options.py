"""One options object: the API, the CLI and the solver stage accept and refuse the same values the same way,
and the CLI's defaults are the API's."""
from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from onnxcrit import DEFAULTS, Options, api
from onnxcrit.cli import main
from onnxcrit.errors import InputError
from onnxcrit.frontend import load_network
from onnxcrit.scoring import compute_scores

from .corpus import ROOT

CNN = ROOT / "models" / "digits_cnn.onnx"
CALIB = ROOT / "models" / "digits_cnn_calib.npz"

BAD = [  # (API keyword, value, CLI flag, message)
    ("lam", 0.0, "--lam", "lambda must be > 0"),
    ("eps", -1.0, "--eps", "eps must be >= 0"),
    ("margin", -1.0, "--margin", "margin must be >= 0"),
    ("time_limit", 0.0, "--time-limit", "time limit must be > 0 seconds"),
    ("num_samples", 0, "--num-samples", "num_samples must be >= 1"),
    ("threshold", 1.5, "--threshold", "threshold must be in [0, 1]"),
    ("target_params", 0.0, "--target-params", "target params must be a fraction in (0, 1]"),
    ("round_to", "x", "--round-to", "round-to must be 'auto' or an integer >= 1"),
    ("confidence", 1.0, "--confidence", "confidence must be in [0, 1)"),
    ("memory_limit", 0.0, "--memory-limit", "memory limit must be > 0 GB"),
]


@pytest.mark.parametrize("name, value, flag, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_refused_alike_everywhere(name, value, flag, message, tmp_path):
    with pytest.raises(InputError, match=re.escape(message)):
        Options(**{name: value})
    with pytest.raises(InputError, match=re.escape(message)):
        api.optimize(CNN, CALIB, **{name: value})
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CALIB), flag, str(value),
                                    "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("name, value", [("lam", 0.0), ("eps", -1.0), ("margin", -1.0), ("time_limit", 0.0)])
def test_the_solver_stage_checks_through_the_same_options(name, value):
    net, _ = load_network(CNN)
    data = np.load(CALIB)
    with pytest.raises(InputError) as api_err:
        Options(**{name: value})
    with pytest.raises(InputError) as stage_err:
        compute_scores(net, data["x"], data["y"], **{name: value})
    assert str(stage_err.value) == str(api_err.value)


def test_cli_defaults_are_the_api_defaults(monkeypatch, tmp_path):
    seen = {}

    def fake(model, data, *, eval_data=None, options=None, finetune_data=None, progress=None):
        seen["options"] = options
        raise InputError("stop here")
    monkeypatch.setattr(api, "optimize", fake)
    res = CliRunner().invoke(main, ["optimize", str(CNN), "--data", str(CALIB), "-o", str(tmp_path / "o.onnx")])
    assert res.exit_code == 2 and "stop here" in res.output
    assert seen["options"] == DEFAULTS


def test_unknown_options_and_changes():
    with pytest.raises(InputError, match="unknown option: lamda"):
        DEFAULTS.updated(lamda=1.0)
    changed = DEFAULTS.updated(round_to="8", margin=2.0)
    assert changed.round_to == 8 and changed.margin == 2.0 and DEFAULTS.margin == 1.0
    with pytest.raises(InputError, match="exclude each other"):
        Options(threshold=0.2, mean_threshold=True)
    assert DEFAULTS.mode == "auto"  # the API and the CLI start from the same mode
