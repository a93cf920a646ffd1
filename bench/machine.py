"""What a benchmark ran on: one description for every benchmark's JSON."""

from __future__ import annotations

import importlib
import os
import platform
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
