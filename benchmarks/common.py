"""Where the benchmark scripts write their tables: tools/results/, one file each, also printed."""
from __future__ import annotations

import os

RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


def publish(path: str | os.PathLike, text: str, echo: bool = True) -> None:
    """Write `text` to `path` (its folder made as needed) and print it unless `echo` is False."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    if echo:
        print(text)
