"""One BLAS thread per serving process.

numpy's OpenBLAS splits a matrix product over every core once it is big enough (a
DecideBatch of 256 rows is), and its threads then spin waiting for the next one. A server
multiplies small matrices between network calls and gets its parallelism from ``--workers``:
the extra threads only burn CPU that gRPC, the other workers and the clients need (a 256-row
batch took twice the CPU time for less throughput). threadpoolctl finds the BLAS libraries
loaded into the process, whichever numpy was built with.
"""

from __future__ import annotations

import logging

log = logging.getLogger("cvm_rl.server")


def single_threaded_blas() -> int:
    """Limit every loaded BLAS to one thread; returns how many libraries were limited."""
    import numpy  # noqa: F401  (loads numpy's BLAS, if nothing has yet)
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    limited = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    log.debug("blas_threads", extra={"libraries_set_to_one_thread": len(limited)})
    return len(limited)
