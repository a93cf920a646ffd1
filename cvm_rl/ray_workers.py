"""What the project's Ray workers share (``cvm sweep``'s trials, the Ray OPE's file tasks)."""

ONE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""The environment of a Ray worker: one BLAS thread each (a worker per CPU, like one torch
thread a trial)."""
