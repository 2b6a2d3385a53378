"""Start or attach the Dask cluster a study runs on."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from distributed import Client
from distributed import LocalCluster

_logger = logging.getLogger(__name__)

# Snakemake exports these as the rule's threads (8 with -c8): eight workers each running eight
# OpenMP threads on two cores slowed a 0.3 s trial to 100 s here. One worker slot, one thread.
ONE_THREAD_ENV = {
    name: "1"
    for name in (
        "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS",
        "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
    )
}


@contextmanager
def connect(
    n_workers: int = 1, address: str | None = None, scheduler_file: str | None = None
) -> Iterator[Client]:
    """Yield a client: to `address`/`scheduler_file` if given, else to a new `LocalCluster`.

    The local cluster has one single-threaded worker process per slot (BLAS/OpenMP capped at
    one thread), listens on 127.0.0.1 only, and picks a free
    dashboard port so parallel runs never clash on 8787.
    """
    if address or scheduler_file:
        with Client(address=address, scheduler_file=scheduler_file) as client:
            _logger.info("attached to scheduler %s", client.scheduler.address)
            yield client
        return
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        silence_logs=logging.CRITICAL,
        env=ONE_THREAD_ENV,  # shutdown races log scary heartbeat errors
    ) as cluster, Client(cluster) as client:
        _logger.info("local cluster: %d workers at %s", n_workers, cluster.scheduler_address)
        yield client
