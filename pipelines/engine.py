"""Where a flow's stages run: one after another in the flow's process, or side by side on a Dask cluster.

Flows submit their stages to Prefect's task runner and pass one stage's future as the next one's
input, so the runner sees which stages are independent (the configurations of a study or a sweep).
By default the runner has one thread: stages run one at a time in submission order, as a
single machine with the in-process launcher needs (Keras keeps one global state per process).
``--workers N`` starts a local Dask cluster of N single-threaded worker processes; ``--cluster
ADDRESS`` uses a running one (``dask scheduler`` and ``dask worker`` on other hosts, dask-kubernetes,
dask-jobqueue). Either way each stage still runs through its launcher on the worker that took it,
and every worker reads and writes the same artifact store.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from stages.lib.machine import cpus

SEQUENTIAL = ThreadPoolTaskRunner(max_workers=1)


def task_runner(cluster: str | None = None, workers: int | None = None) -> TaskRunner:
    """The runner for ``--cluster ADDRESS`` or ``--workers N`` (the command line takes one at most);
    sequential when neither is given."""
    if not (cluster or workers):
        return SEQUENTIAL
    from prefect_dask import DaskTaskRunner

    if cluster:
        return DaskTaskRunner(address=cluster)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": thread_limits(workers)})


def thread_limits(workers: int) -> dict[str, str]:
    """Environment of each of ``workers`` processes sharing this machine: one task at a time, whose
    training uses its share of the cores (TensorFlow reads these at start-up)."""
    threads = str(max(1, cpus() // workers))
    return {"TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": threads, "OMP_NUM_THREADS": threads}
