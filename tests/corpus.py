"""The committed ONNX files the tests run on: the exporter corpus and the bundled example models.

Listed explicitly (not globbed from models/) so files a user writes there, e.g. the README demo's
`models/digits_cnn.pruned.onnx`, are not taken for test inputs.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "models" / "digits_mlp.onnx", ROOT / "models" / "digits_cnn.onnx"]
EXPORTED = sorted(p for p in (ROOT / "tests" / "data").glob("*.onnx") if not p.name.endswith(".pruned.onnx")) \
    + EXAMPLES
# files reproducing what other exporters publish (tools/make_published_patterns.py; tests/data/published/README.md)
PUBLISHED = sorted((ROOT / "tests" / "data" / "published").glob("*.onnx"))
