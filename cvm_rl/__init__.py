"""cvm-rl: offer and channel optimization for long-run customer value."""

import os

# One BLAS thread unless the caller chose otherwise (must precede numpy's import to count):
# the small matrix products of bandits and bundle inference run steadier and several times
# faster on one thread than split over two busy cores (`python -m bench.policies`).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
