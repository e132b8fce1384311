"""Native thread pools, sized once and on purpose.

FAISS (OpenMP) and the BLAS libraries bundled by numpy, scipy and faiss (three OpenBLAS
copies here) each start one thread per core by default. On a gateway the cores belong to
the agent processes and the broker: a micro-batch of 1-32 windows gains nothing from a
pool, whose idle threads spin and take the core another process needed (issue 12 saw an
extra OpenMP thread spinning under load). onnxruntime sessions are sized where they are
made (``encoders/projection.py``: one intra-op thread).
"""

from __future__ import annotations

import logging

from threadpoolctl import threadpool_info, threadpool_limits

from faultline.fault_library.index import set_search_threads

log = logging.getLogger(__name__)


def limit_library_threads(n: int) -> dict[str, int]:
    """Cap every native pool of this process at ``n`` threads; returns pool -> threads."""
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    threadpool_limits(limits=n)  # kept for the process's life: not used as a context
    set_search_threads(n)
    pools: dict[str, int] = {}
    for pool in threadpool_info():
        name = f"{pool['internal_api']}:{pool['filepath'].rsplit('/', 1)[-1]}"
        pools[name] = int(pool["num_threads"])
    log.debug("native thread pools: %s", pools)
    return pools
