"""Single-step evaluation of an export on a Ray cluster (:func:`evaluate_export_ray`): the
streamed evaluation of :mod:`cvm_rl.ope.streaming` with its two passes spread over Ray
workers through Ray Data. Needs the ``ray`` extra (``pip install 'cvm-rl[ray]'``).

The estimator code is the streamed one: each pass maps the export's Parquet files (a Ray
Data dataset of file indices, one file per task) to that file's partial result, computed by
the functions the streamed path calls per file (:meth:`ExportCounts.add_file`,
:meth:`SumsModel.file_sums`); the driver merges the partial results in the files' order and
makes the report exactly as the streamed path does. Every draw is seeded by ``(seed, file,
batch within the file)`` and the partial sums are added in the same order, so the result
equals :func:`~cvm_rl.ope.streaming.evaluate_export_streaming`'s to the last bit, intervals
included.

Why a dataset of files rather than ``ray.data.read_parquet(uri)`` and ``map_batches`` over
its blocks: Ray's blocks do not say where their rows were in the export, and the result
depends on it in two places. The reward model's cross-fitting folds follow the sample's
row order (decision time, ties in the export's order), and the bootstrap's multiplicities are
drawn per record batch; reading whole files with the streamed path's reader keeps both, and
keeps its memory bound in every worker (one record batch, without read-ahead). Ray Data still
schedules the files over the cluster with backpressure, retries failed tasks and streams the
partial results back in order (``preserve_order``). The parallelism is the number of files:
``cvm logs export`` writes one per date (and shard), so a year of decisions is 365 tasks.

What travels: the file list, the candidates, the fitted reward model and the sample's
out-of-fold predictions (``ray.put`` once per pass); each task returns one file's counts
(pass 1: counts, its distinct customer ids and its own bounded sample) or every candidate's
sums (pass 2: a few arrays of ``n_bootstrap`` by the estimators' terms). The driver holds
the merged counts and one partial at a time, never the rows. Workers read the files
themselves, so the export must be where every node can read it: shared storage or object
storage (``s3://bucket/cvm/export/``; pyarrow's filesystems, credentials from the nodes'
environment), and ``cvm_rl`` must be installed on every node.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cvm_rl.ope.evaluate import ProgressCallback
from cvm_rl.ope.inputs import OpeInputError
from cvm_rl.ope.results import OpeResult
from cvm_rl.ope.reward_model import CrossFittedRewardModel
from cvm_rl.ope.single_step_sums import CandidateSums
from cvm_rl.ope.streaming import (
    BATCH_ROWS,
    REWARD_MODEL_SAMPLE_ROWS,
    ExportCounts,
    ExportScan,
    SumsModel,
    _Sample,
    evaluate_export_files,
    merge_sums,
)
from cvm_rl.policies.base import Policy
from cvm_rl.ray_workers import ONE_THREAD_ENV
from simulator.config import Scenario

LOCAL_CPUS = 2
"""CPUs of the local Ray started when no address is given and none is running."""
CONNECT_TIMEOUT_S = 5.0
"""How long the address's host and port are tried before Ray is asked to connect (Ray itself
retries an unreachable address for minutes)."""
RAY_EXTRA = "pip install 'cvm-rl[ray]'"


class RayUnavailableError(OpeInputError):
    """Ray is not installed, or the cluster at the address cannot be reached."""


def import_ray() -> Any:
    """``ray`` with Ray Data, or a RayUnavailableError naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailableError(
            f"Ray is not installed ({exc}): the Ray path needs the `ray` extra ({RAY_EXTRA})"
        ) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A RayUnavailableError when ``address`` (``HOST:PORT`` or ``ray://HOST:PORT``) is
    malformed or nothing listens there; ``auto`` and ``local`` are left to Ray."""
    if address in ("auto", "local"):
        return
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(
            f"Ray address {address!r}: expected HOST:PORT (the head's GCS port, e.g. "
            "10.0.0.5:6379), ray://HOST:PORT (Ray Client, port 10001) or auto"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailableError(
            f"Ray address {address!r}: cannot reach a Ray cluster there ({exc}); start one "
            "with `ray start --head` or pass its head's address"
        ) from None


def connect(address: str | None) -> bool:
    """Ray ready for use: connected to ``address``, or a local Ray of :data:`LOCAL_CPUS` CPUs
    when none is given; a Ray this process already initialized is used as it is. True when
    this call started it (the caller then shuts it down)."""
    ray = import_ray()
    if address:
        check_address(address)
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(
                num_cpus=LOCAL_CPUS,
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": ONE_THREAD_ENV},
            )
    except ConnectionError as exc:
        raise RayUnavailableError(f"Ray address {address!r}: {exc}") from None
    return True


def _run_files(
    batch: dict[str, np.ndarray], *, task: Callable[[ExportScan, int, Any], Any], shared: list[Any]
) -> dict[str, np.ndarray]:
    """A Ray Data batch of file indices to their pickled partial results (an input error is
    the file's result, raised by the driver when the file's turn comes)."""
    import ray

    scan, payload = ray.get(shared[0])
    out = []
    for file in batch["file"].tolist():
        try:
            part: Any = task(scan, int(file), payload)
        except OpeInputError as exc:
            part = exc
        out.append(pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL))
    return {"file": batch["file"], "partial": np.array(out, dtype=object)}


def _file_counts(scan: ExportScan, file: int, payload: tuple[int, int]) -> ExportCounts:
    seed, sample_rows = payload
    counts = ExportCounts(_Sample(sample_rows))
    counts.add_file(scan, file, seed)
    return counts


def _file_sums(scan: ExportScan, file: int, model: SumsModel) -> dict[str, CandidateSums]:
    return model.file_sums(scan, file)


class RayRunner:
    """The passes on Ray: one task per file, partial results merged in the files' order."""

    where = "read on Ray, file by file, in record batches"

    def __init__(self) -> None:
        self.ray = import_ray()

    def _files(self, scan: ExportScan, task: Callable[..., Any], payload: Any) -> Iterator[Any]:
        """Each file's partial result, in the files' order."""
        files = len(scan.fragments)
        if not files:
            return
        shared = self.ray.put((scan, payload))
        items = self.ray.data.from_items([{"file": i} for i in range(files)])
        mapped = items.map_batches(
            _run_files,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"task": task, "shared": [shared]},
            num_cpus=1,
        )
        mapped.context.execution_options.preserve_order = True
        mapped.context.enable_progress_bars = False
        waiting: dict[int, bytes] = {}  # out of order (not with preserve_order)
        next_file = 0
        for row in mapped.iter_rows():
            waiting[int(row["file"])] = row["partial"]
            while next_file in waiting:
                part = pickle.loads(waiting.pop(next_file))
                if isinstance(part, OpeInputError):
                    raise part
                yield part
                next_file += 1

    def counts(self, scan: ExportScan, seed: int, sample_rows: int) -> ExportCounts:
        total = ExportCounts(_Sample(sample_rows))
        for part in self._files(scan, _file_counts, (seed, sample_rows)):
            total.merge(part)
        return total

    def sums(self, scan: ExportScan, model: SumsModel) -> dict[str, CandidateSums]:
        total: dict[str, CandidateSums] | None = None
        for part in self._files(scan, _file_sums, model):
            total = merge_sums(total, part)
        if total is None:
            return {name: CandidateSums(model.groups, model.n_bootstrap) for name in model.names}
        return total


def evaluate_export_ray(
    path: str | Path,
    candidates: Mapping[str, Policy],
    *,
    scenario: Scenario,
    address: str | None = None,
    alpha: float = 0.05,
    n_bootstrap: int = 200,
    seed: int = 0,
    reward_model: CrossFittedRewardModel | None = None,
    sample_rows: int = REWARD_MODEL_SAMPLE_ROWS,
    batch_rows: int = BATCH_ROWS,
    self_check: bool = True,
    sources: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> OpeResult:
    """:func:`~cvm_rl.ope.streaming.evaluate_export_streaming` on Ray (the same result; see
    the module docstring). ``path``: an export directory every Ray node can read, or a URI
    (``s3://bucket/cvm/export/``). ``address``: the cluster (``HOST:PORT``, ``ray://HOST:PORT``
    or ``auto``); without one, a local Ray of :data:`LOCAL_CPUS` CPUs. A Ray this process
    already initialized is used as it is and left running; one started here is shut down."""
    started = connect(address)
    ray = import_ray()
    try:
        runner = RayRunner()
        resources = ray.cluster_resources()
        return evaluate_export_files(
            path,
            candidates,
            runner,
            scenario=scenario,
            alpha=alpha,
            n_bootstrap=n_bootstrap,
            seed=seed,
            reward_model=reward_model,
            sample_rows=sample_rows,
            batch_rows=batch_rows,
            self_check=self_check,
            sources=sources,
            progress=progress,
            notes=(
                f"Both passes ran on Ray ({int(resources.get('CPU', 0))} CPUs, one task per "
                "file), merged file by file in the export's order.",
            ),
        )
    finally:
        if started:
            ray.shutdown()
