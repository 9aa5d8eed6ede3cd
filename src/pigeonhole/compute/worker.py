"""The Ray side of a job: the task that runs a handler, its context, and the progress sink.

Workers never write the database. They push small messages (progress, events, checkpoints, cache
notes) to ``ProgressSink``, a named detached actor that the dispatcher drains a few times a second;
so progress reaches the DB within about a second, and a restarted dispatcher finds the sink again.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import ray

from pigeonhole.compute.handlers import JobFailed, load_handler
from pigeonhole.errors import is_storage_full
from pigeonhole.storage.cache import DiskCache

SINK_NAME = "pigeonhole-progress-sink"
JOB_NICENESS = 10
FLUSH_INTERVAL_S = 0.25
CANCEL_CHECK_INTERVAL_S = 0.25
LOG_LINE_MAX = 500


@ray.remote(num_cpus=0, max_restarts=-1)
class ProgressSink:
    """Messages from workers, kept until the dispatcher drains them; cancel flags for workers."""

    def __init__(self) -> None:
        self._messages: list[dict[str, Any]] = []
        self._cancelled: set[tuple[str, int]] = set()

    def push(self, messages: list[dict[str, Any]]) -> None:
        self._messages.extend(messages)

    def drain(self) -> list[dict[str, Any]]:
        messages, self._messages = self._messages, []
        return messages

    def cancel(self, job_id: str, attempt: int) -> None:
        self._cancelled.add((job_id, attempt))

    def is_cancelled(self, job_id: str, attempt: int) -> bool:
        return (job_id, attempt) in self._cancelled

    def forget(self, job_id: str, attempt: int) -> None:
        self._cancelled.discard((job_id, attempt))


def get_sink(namespace: str | None = None) -> Any:
    """The sink, created if missing. Pinned (softly) to the calling node: the dispatcher's own node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node_id = ray.get_runtime_context().get_node_id()
    return ProgressSink.options(
        name=SINK_NAME, namespace=namespace, lifetime="detached", get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=True),
    ).remote()


_sink_handles: dict[str | None, Any] = {}


def _sink_handle(namespace: str | None, *, fresh: bool = False) -> Any:
    """The sink's handle, looked up once per worker process (workers run many jobs)."""
    if fresh or namespace not in _sink_handles:
        _sink_handles[namespace] = ray.get_actor(SINK_NAME, namespace=namespace)
    return _sink_handles[namespace]


class WorkerContext:
    """``JobContext`` as seen by ``run``: batches reports and sends them from a background thread."""

    def __init__(self, job_id: str, attempt: int, env: dict[str, Any]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.node_id = ray.get_runtime_context().get_node_id()
        self.cache_dir = Path(env["cache_dir"])
        self.cache_max_bytes = int(env["cache_max_bytes"])
        self.blob_url = str(env["blob_url"])
        self._checkpoint: dict[str, Any] | None = env.get("checkpoint")
        self._cache: DiskCache | None = None
        self._namespace = env.get("namespace")
        self._sink = _sink_handle(self._namespace)
        self._seq = 0
        self._pending: list[dict[str, Any]] = []
        self._progress: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._cancelled = False
        # The first check waits one interval: a cancel before then also reaches the task through
        # ray.cancel, and a short job then never calls the sink at all.
        self._cancel_checked = time.monotonic()
        self.pushed = False  # whether any report went through the sink (the dispatcher then drains it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._flush_loop, daemon=True, name=f"job-{job_id}-reports")
        self._thread.start()

    @property
    def cache(self) -> DiskCache:
        """The node-local cache (LRU under ``cache_max_bytes``), shared by the jobs running on this node."""
        if self._cache is None:
            self._cache = DiskCache(self.cache_dir, self.cache_max_bytes)
        return self._cache

    # -- JobContext ---------------------------------------------------------------------------
    def report(self, *, progress: float | None = None, stage: str | None = None, eta_s: float | None = None,
               metrics: dict[str, float] | None = None, log: str | None = None) -> None:
        with self._lock:
            if progress is not None:
                self._progress["progress"] = min(1.0, max(0.0, float(progress)))
            if stage is not None:
                self._progress["stage"] = str(stage)[:200]
            if eta_s is not None:
                self._progress["eta_s"] = max(0.0, float(eta_s))
            if metrics:  # history points are never merged away
                self._pending.append(self._message("metrics", {"metrics": dict(metrics)}))
            if log:
                self._pending.append(self._message("log", {"line": str(log)[:LOG_LINE_MAX]}))

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= CANCEL_CHECK_INTERVAL_S:
            self._cancel_checked = now
            with contextlib.suppress(Exception):  # an unreachable sink is not a cancel
                self._cancelled = bool(ray.get(self._sink.is_cancelled.remote(self.job_id, self.attempt), timeout=5))
        return self._cancelled

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append(self._message("event", {"event": dict(event)}))
        self.flush()  # results matter more than batching

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self._checkpoint = dict(state)
        with self._lock:
            self._pending.append(self._message("checkpoint", {"state": dict(state)}))

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self._checkpoint

    def cached(self, key: str) -> None:
        with self._lock:
            self._pending.append(self._message("cached", {"key": key}))

    # -- sending ------------------------------------------------------------------------------
    def _message(self, type_: str, data: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        return {"job_id": self.job_id, "attempt": self.attempt, "seq": self._seq, "type": type_,
                "node_id": self.node_id, **data}

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            batch = self._pending
            self._pending = []
            if self._progress:
                batch.append(self._message("progress", self._progress))
                self._progress = {}
        return batch

    def flush(self) -> None:
        batch = self._take()
        if batch:
            self.pushed = True
            try:
                ray.get(self._sink.push.remote(batch), timeout=10)
            except Exception:  # the sink restarts with its actor; a lost progress report is harmless
                self._sink = _sink_handle(self._namespace, fresh=True)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def close(self) -> list[dict[str, Any]]:
        """Stop sending; returns the reports not sent yet, which travel with the job's outcome (one actor
        call fewer per job, and they reach the dispatcher together with the result)."""
        self._stop.set()
        self._thread.join(timeout=2)
        return self._take()


def _background_priority() -> None:
    """Jobs run at a lower CPU priority than the API: on a machine that both trains and serves (the
    embedded default), predictions keep their latency while a training job takes every idle cycle.
    Niceness only goes up, so a reused worker process stays where it is."""
    with contextlib.suppress(OSError):
        current = os.nice(0)
        if current < JOB_NICENESS:
            os.nice(JOB_NICENESS - current)


def run_job(handler_path: str, job_id: str, attempt: int, payload: dict[str, Any],
            env: dict[str, Any]) -> dict[str, Any]:
    """The body of every job's Ray task (submitted by the dispatcher with the job's resources)."""
    _background_priority()
    ctx = WorkerContext(job_id, attempt, env)
    out: dict[str, Any]
    try:
        out = {"result": load_handler(handler_path).run(ctx, payload) or {}}
    except JobFailed as exc:
        out = {"error": str(exc)}
    except Exception as exc:  # a bug or bad input in the handler: no retry, a reason for the user
        if is_storage_full(exc):
            out = {"error": "The job stopped because the server ran out of disk space. Ask the administrator to "
                            "free or add space, then start it again."}
        else:
            out = {"error": f"The job stopped with an error: {type(exc).__name__}: {exc}"[:2000]}
    finally:
        reports = ctx.close()
    return {**out, "node_id": ctx.node_id, "reports": reports, "pushed": ctx.pushed}


def probe_node(cache_dir: str) -> dict[str, Any]:
    """Disk used by the node-local cache and free space there (a zero-CPU task pinned to each node)."""
    import shutil

    root = Path(cache_dir)
    used = 0
    if root.exists():
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):
                    used += os.lstat(os.path.join(dirpath, name)).st_size
    probe = root if root.exists() else root.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return {"node_id": ray.get_runtime_context().get_node_id(), "used": used, "free": shutil.disk_usage(probe).free}


run_job_remote = ray.remote(max_retries=0)(run_job)
probe_node_remote = ray.remote(num_cpus=0, max_retries=0)(probe_node)
