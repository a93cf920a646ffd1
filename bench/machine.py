"""What a benchmark ran on, one description for every benchmark's JSON, and where the JSON
goes."""

from __future__ import annotations

import importlib
import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info(*packages: str) -> dict[str, Any]:
    """Interpreter, cores, numpy's and the named packages' versions, the BLAS thread setting
    and the load average (the machine is shared, so a busy run shows here)."""
    versions = {}
    for package in ("numpy", *packages):
        module = importlib.import_module(package)
        versions[package.replace(".", "_")] = getattr(module, "__version__", None)
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **versions,
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(result: dict[str, Any], out: str | Path) -> Path:
    """Write a benchmark's ``result`` as indented JSON to ``out`` (its directory made) and say
    where."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path
