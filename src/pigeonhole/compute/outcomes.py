"""How an attempt ends: finished Ray tasks are collected and each outcome is written in its own transaction.

A handler error (or ``JobFailed``) fails the job with its reason and no retry; a lost worker or node
requeues it (``jobs.transitions.retry_or_fail``). ``on_success`` runs in the transaction that moves the
job to ``succeeded``, with the worker's last reports, so a replay or a late result never applies twice
and nothing is applied after a cancel.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import NodeDiedError, RayError, RayTaskError, TaskCancelledError, TaskUnschedulableError
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute.cluster import Cluster, Stats
from pigeonhole.compute.handlers import JobFailed, handler_for
from pigeonhole.compute.reports import Held, Message, Reports
from pigeonhole.db.tables import Job
from pigeonhole.jobs import transitions
from pigeonhole.settings import Settings


class Outcomes:
    """The dispatcher's transactions around ``jobs.transitions``, counted in ``stats``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], stats: Stats, reports: Reports) -> None:
        self.settings = settings
        self.sessions = sessions
        self.stats = stats
        self.reports = reports

    def succeeded(self, job_id: str, attempt: int, result: dict[str, Any], node_id: str,
                  reports: list[Message] | None = None) -> None:
        with self.sessions() as db:
            job = transitions.lock_running(db, job_id, attempt)
            if job is None:  # cancelled meanwhile (then nothing is created after the cancel) or superseded
                return
            handler = handler_for(job.kind)
            try:
                self.reports.write(db, job, attempt, reports or [])
                if handler is not None:
                    handler(self.settings).on_success(db, job, result)
            except Exception as exc:
                db.rollback()
                if reports:  # what the worker reported still counts (its events, its log)
                    self.reports.apply_batch(job_id, attempt, reports)
                reason = exc.args[0] if isinstance(exc, JobFailed) and exc.args else \
                    f"The job finished but its results could not be saved: {type(exc).__name__}: {exc}"
                self.failed(job_id, attempt, str(reason)[:2000])
                return
            transitions.succeed(db, job, attempt, result, node_id)
            db.commit()
        self.stats.succeeded += 1

    def failed(self, job_id: str, attempt: int, reason: str) -> None:
        with self.sessions() as db:
            job = transitions.lock_running(db, job_id, attempt)
            if job is None:
                return
            transitions.fail(db, job, reason, self.settings)
            db.commit()
        self.stats.failed += 1

    def fail_queued(self, job_id: str, reason: str) -> None:
        with self.sessions() as db:
            if transitions.fail_queued(db, job_id, reason, self.settings):
                db.commit()
                self.stats.failed += 1

    def retry_or_fail(self, job_id: str, attempt: int, reason: str) -> None:
        with self.sessions() as db:
            outcome = transitions.retry_or_fail(db, job_id, attempt, reason, self.settings)
            if outcome is not None:
                db.commit()
                self.stats.count(outcome)

    def cancelled(self, job_id: str, attempt: int) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id, populate_existing=True)
            if job is not None and job.status == "running" and job.attempt == attempt:
                transitions.cancel_running(db, job, self.settings)
                db.commit()
                self.stats.cancelled += 1

    def requeue_interrupted(self, job_id: str, attempt: int) -> None:
        with self.sessions() as db:
            transitions.requeue_interrupted(db, job_id, attempt)
            db.commit()


def collect_finished(cluster: Cluster, reports: Reports, outcomes: Outcomes) -> None:
    if not cluster.tracked:
        return
    by_ref = {r.ref: r for r in cluster.tracked.values()}
    ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
    if not ready:
        return
    results: dict[Any, tuple[Any, RayError | None]] = {}
    for ref in ready:
        try:
            results[ref] = (ray.get(ref), None)
        except RayError as exc:
            results[ref] = (None, exc)
    # A worker sends its reports to the sink while it runs and returns the rest with its outcome: the
    # sink is drained first, so they are written before (or, for a success, with) the outcome. Only
    # if one of these workers used the sink: a short job never does, which saves a call per job.
    held: Held = {}
    if any(not isinstance(out, dict) or out.get("pushed", True) for out, _ in results.values()):
        held = reports.apply(hold=frozenset(by_ref[ref].job_id for ref in ready))
    for ref in ready:
        running = by_ref[ref]
        cluster.untrack(running)
        batch = held.pop((running.job_id, running.attempt), [])
        out, lost = results[ref]
        if isinstance(out, dict) and out.get("reports"):  # the last reports come with the outcome
            batch = sorted(batch + list(out["reports"]), key=lambda m: m["seq"])
        if batch and (lost is not None or "error" in out):
            reports.apply_batch(running.job_id, running.attempt, batch)
            batch = []
        if isinstance(lost, TaskCancelledError):
            if running.cancel_sent_at is None:
                outcomes.retry_or_fail(running.job_id, running.attempt, "Its Ray task was cancelled.")
            continue
        if isinstance(lost, RayTaskError):  # the task body itself raised (not the handler: run_job catches that)
            outcomes.failed(running.job_id, running.attempt, f"The job stopped with an error: {lost}"[:2000])
            continue
        if lost is not None:  # node died, worker crashed, out of memory, object lost …
            if isinstance(lost, NodeDiedError | TaskUnschedulableError):
                cluster.node_lost(running.node_id)
            if running.cancel_sent_at is None:
                outcomes.retry_or_fail(running.job_id, running.attempt, _system_reason(lost))
            continue
        assert out is not None
        if "error" in out:
            outcomes.failed(running.job_id, running.attempt, str(out["error"]))
        else:
            outcomes.succeeded(running.job_id, running.attempt, out.get("result") or {},
                               out.get("node_id") or running.node_id, batch)
    for (job_id, attempt), rest in held.items():  # reports of an attempt that is no longer tracked
        reports.apply_batch(job_id, attempt, rest)


def _system_reason(exc: RayError) -> str:
    name = type(exc).__name__
    if "NodeDied" in name:
        return "The compute node running the job stopped."
    if "OutOfMemory" in name:
        return "The compute node ran out of memory."
    if "WorkerCrashed" in name or "ActorDied" in name:
        return "The worker process running the job stopped."
    return f"Ray lost the job's work ({name})."
