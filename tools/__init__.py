"""Generators of files committed to the repository, run from its root as `python -m tools.NAME`:

- make_examples: models/ (the bundled digits MLP and CNN with their data; needs torch)
- make_test_models: the exporter corpus in tests/data/ (needs torch, scikit-learn, skl2onnx)
- make_published_patterns: tests/data/published/ (needs torch; tf2onnx in a separate venv for the Keras files)

Each is byte-deterministic. The benchmarks live in benchmarks/ (`python -m benchmarks.NAME`).
"""
