"""The dispatcher: the only Ray driver. One loop, a few times a second:

1. keeps its DB lease (only the holder acts);
2. syncs the node registry from Ray (alive/dead, resources) and re-reads admin drain flags;
3. applies what workers reported through the progress sink (progress, metric history, log lines,
   checkpoints, cache notes, emitted events) - events exactly once per job, attempt and sequence;
4. collects finished Ray tasks: success and failure hooks run in the transaction that ends the job;
   a lost node or worker makes the job retry (up to its attempt limit), a handler error fails it;
5. cancels jobs whose cancel was requested (Ray task cancelled, job ``cancelled`` at once);
6. claims queued jobs round-robin between users, under per-user limits, and places each on a node
   (resource fit, node class, drain flags, data affinity), then submits it as a Ray task.

At start it reconciles: jobs left ``running`` by an earlier dispatcher have lost their Ray work (a
driver's tasks die with it), so they are retried from their last checkpoint, or failed at the limit.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import ray
from ray.exceptions import NodeDiedError, RayError, RayTaskError, TaskCancelledError, TaskUnschedulableError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute import lease, nodes
from pigeonhole.compute.handlers import JobFailed, JobHandler, Resources, handler_for, kinds
from pigeonhole.compute.placement import NodeView, choose_node
from pigeonhole.compute.worker import get_sink, probe_node_remote, run_job_remote
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import ComputeNode, Job, JobEvent
from pigeonhole.ids import new_id
from pigeonhole.settings import Settings

log = logging.getLogger(__name__)

MAX_METRIC_POINTS = 2000
LOG_TAIL_CHARS = 8000
PROBE_INTERVAL_S = 15.0
REPORT_INTERVAL_S = 0.2
_CLAIM_COLUMNS = (Job.id, Job.owner_id, Job.kind, Job.resources, Job.placement, Job.affinity_key, Job.queued_at)
_QUEUED_AFTER = select(*_CLAIM_COLUMNS).where(Job.status == "queued", Job.id > bindparam("after")).order_by(Job.id)
_QUEUED_COUNT = select(func.count()).select_from(Job).where(Job.status == "queued")
IDLE_CHORES_INTERVAL_S = 1.0
WAIT_STAGE_AFTER_S = 1.0
QUEUE_READ_INTERVAL_S = 5.0
LOST_NODE_QUARANTINE_S = 60.0
OUTCOME_SEQ = -1


@dataclass
class Running:
    job_id: str
    owner_id: str
    attempt: int
    kind: str
    node_id: str
    request: dict[str, float]
    ref: Any
    cancel_sent_at: float | None = None
    forced: bool = False


@dataclass
class Stats:
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    events: int = 0
    extra: dict[str, int] = field(default_factory=dict)


def _append_log(job: Job, line: str) -> None:
    job.log_tail = (job.log_tail + line.rstrip("\n") + "\n")[-LOG_TAIL_CHARS:]


class Dispatcher:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], *, holder: str | None = None,
                 namespace: str | None = None) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.namespace = namespace
        self.tracked: dict[str, Running] = {}
        self.views: dict[str, NodeView] = {}
        self.last_served: dict[str, float] = {}
        self.wait_reasons: dict[str, str] = {}
        # The queue as last read (placement columns only), so a claim pass reads only what is new: see _queue.
        self.queue: dict[str, Any] = {}
        self._next_queue_read = 0.0
        self.stats = Stats()
        self._stop = threading.Event()
        self._sink: Any = None
        self._lease_until = 0.0
        self._next_sync = 0.0
        self._next_probe = 0.0
        self._last_chores = float("-inf")
        self._probes: dict[Any, str] = {}
        self.lost_nodes: dict[str, float] = {}  # node id -> when Ray said it died (ray.nodes() lags behind)
        self.cache_dir = str(settings.resolved_cache_dir / "compute")

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, on_ready: Any = None) -> None:
        """Wait for the lease, reconcile, then dispatch until ``stop()``. Requires ``ray.init`` done."""
        while not self._stop.is_set() and not self._renew_lease():
            self._stop.wait(max(0.2, self.settings.dispatcher_lease_ttl_s / 5))
        if self._stop.is_set():
            return
        log.info("dispatcher %s holds the lease", self.holder)
        try:
            kinds()  # import every job kind's module now, not while the first job waits
            self._sink = get_sink(self.namespace)
            self._sync_nodes()
            self.reconcile()
            if on_ready is not None:
                on_ready()
            while not self._stop.is_set():
                due = time.monotonic() > self._lease_until - self.settings.dispatcher_lease_ttl_s * 2 / 3
                if due and not self._renew_lease():
                    log.error("dispatcher %s lost its lease; stopping its work", self.holder)
                    self._abandon()
                    return
                try:
                    self.tick()
                    self._idle()
                except Exception:  # a database or Ray hiccup: log it and go on with the next tick
                    log.exception("dispatcher tick failed")
                    self._stop.wait(self.settings.dispatcher_poll_interval_s)
            self._requeue_own_work()
        finally:
            with self.sessions() as db:
                lease.release(db, self.holder)

    def _renew_lease(self) -> bool:
        with self.sessions() as db:
            ok = lease.try_acquire(db, self.holder, self.settings.dispatcher_lease_ttl_s)
        if ok:
            self._lease_until = time.monotonic() + self.settings.dispatcher_lease_ttl_s
        return ok

    def _idle(self) -> None:
        """Sleep until the next tick, waking early when a job's Ray task finishes."""
        refs = [r.ref for r in self.tracked.values()]
        if refs:
            ray.wait(refs, num_returns=1, timeout=self.settings.dispatcher_poll_interval_s)
        else:
            self._stop.wait(self.settings.dispatcher_poll_interval_s)

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_sync:
            self._sync_nodes()
            self._next_sync = now + self.settings.node_sync_interval_s
        # Claiming runs every tick (a queued job starts within one poll interval); progress reports and
        # cancels, which cost a call to the Ray sink actor, run a few times a second while work runs and
        # once a second when idle, so a short poll interval costs almost nothing on an idle machine.
        if now - self._last_chores >= (REPORT_INTERVAL_S if self.tracked else IDLE_CHORES_INTERVAL_S):
            self._apply_reports()
            self._handle_cancels()
            self._last_chores = now
        self._collect_finished()
        self._claim()
        if now >= self._next_probe:
            self._probe_nodes()
            self._next_probe = now + PROBE_INTERVAL_S
        self._collect_probes()

    # -- nodes ----------------------------------------------------------------------------------
    def _sync_nodes(self) -> None:
        ray_nodes = ray.nodes()
        with self.sessions() as db:
            rows = nodes.sync_nodes(db, ray_nodes, self.settings.gpu_class_resource)
            for gone in set(self.views) - {row.id for row in rows} - {r.node_id for r in self.tracked.values()}:
                del self.views[gone]
            for row in rows:
                view = self.views.get(row.id)
                if view is None:
                    view = self.views[row.id] = NodeView(row.id, row.alive, row.draining, row.node_class,
                                                         dict(row.resources_total))
                if row.alive and row.id in self.lost_nodes:
                    if time.monotonic() - self.lost_nodes[row.id] < LOST_NODE_QUARANTINE_S:
                        row.alive = False
                    else:
                        del self.lost_nodes[row.id]
                view.alive, view.draining, view.node_class = row.alive, row.draining, row.node_class
                view.total = dict(row.resources_total)
                available = {k: max(0.0, v - view.reserved.get(k, 0.0)) for k, v in view.total.items()}
                if row.resources_available != available:
                    row.resources_available = available
            db.commit()

    def _refresh_drain_flags(self, db: Session) -> None:
        for node_id, draining in db.execute(select(ComputeNode.id, ComputeNode.draining)):
            if node_id in self.views:
                self.views[node_id].draining = draining

    def _probe_nodes(self) -> None:
        pending = set(self._probes.values())
        for view in self.views.values():
            if view.alive and view.id not in pending:
                ref = probe_node_remote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(view.id, soft=False)).remote(self.cache_dir)
                self._probes[ref] = view.id

    def _collect_probes(self) -> None:
        if not self._probes:
            return
        ready, _ = ray.wait(list(self._probes), num_returns=len(self._probes), timeout=0)
        if not ready:
            return
        with self.sessions() as db:
            for ref in ready:
                node_id = self._probes.pop(ref)
                try:
                    found = ray.get(ref)
                except RayError:
                    continue
                row = db.get(ComputeNode, node_id)
                if row is not None:
                    row.cache_used_bytes, row.cache_free_bytes = int(found["used"]), int(found["free"])
            db.commit()

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Jobs marked running that this dispatcher does not track have lost their Ray work."""
        with self.sessions() as db:
            orphans = db.execute(select(Job.id, Job.attempt).where(Job.status == "running")).all()
        for job_id, attempt in orphans:
            if job_id in self.tracked:
                continue
            self._tell_sink("cancel", job_id, attempt)  # a stale worker, if any, stops and is ignored
            self._retry_or_fail(job_id, attempt, "The dispatcher restarted while the job was running.")

    # -- worker reports -------------------------------------------------------------------------
    def _tell_sink(self, method: str, *args: Any) -> None:
        try:
            getattr(self._sink, method).remote(*args)
        except Exception:  # the sink is an actor with restarts; a lost note is retried by the next call
            self._sink = get_sink(self.namespace)

    def _apply_reports(self, hold: frozenset[str] = frozenset()) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """Apply what workers reported; the reports of the jobs in ``hold`` (finished ones) are returned
        instead, to be written in the transaction that records the job's outcome (one instead of two)."""
        try:
            messages = ray.get(self._sink.drain.remote(), timeout=10)
        except Exception:
            log.warning("the progress sink did not answer; looking it up again")
            self._sink = get_sink(self.namespace)
            return {}
        groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for message in messages or []:
            groups[(message["job_id"], int(message["attempt"]))].append(message)
        held: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for (job_id, attempt), batch in groups.items():
            batch.sort(key=lambda m: m["seq"])
            if job_id in hold:
                held[(job_id, attempt)] = batch
                continue
            try:
                self._apply_batch(job_id, attempt, batch)
            except Exception:
                log.exception("could not apply reports of job %s", job_id)
        return held

    @staticmethod
    def _lock_running(db: Session, job_id: str, attempt: int) -> Job | None:
        """Take the job's row (write lock on SQLite, row lock on PostgreSQL) if this attempt still runs and no
        cancel was asked: anything written in this transaction then happens before any later cancel."""
        locked = db.execute(update(Job).where(Job.id == job_id, Job.status == "running", Job.attempt == attempt,
                                              Job.cancel_requested.is_(False)).values(updated_at=utcnow()))
        if not locked.rowcount:
            db.rollback()
            return None
        return db.get(Job, job_id, populate_existing=True)

    def _apply_batch(self, job_id: str, attempt: int, batch: list[dict[str, Any]]) -> None:
        with self.sessions() as db:
            job = self._lock_running(db, job_id, attempt)
            if job is None:
                return
            self._apply_messages(db, job, attempt, batch)
            db.commit()

    def _apply_messages(self, db: Session, job: Job, attempt: int, batch: list[dict[str, Any]]) -> None:
        """Write one job's reports, in order, into the caller's transaction (which holds the job's row)."""
        if not batch:
            return
        handler = handler_for(job.kind)
        metrics = list(job.metrics or [])
        elapsed = (utcnow() - job.started_at).total_seconds() if job.started_at else 0.0
        for message in batch:
            kind = message["type"]
            if kind == "progress":
                for name in ("progress", "stage", "eta_s"):
                    if name in message:
                        setattr(job, name, message[name])
            elif kind == "metrics":
                metrics.append({"t": round(elapsed, 2), "attempt": attempt, **message["metrics"]})
            elif kind == "log":
                _append_log(job, message["line"])
            elif kind == "checkpoint":
                job.checkpoint = message["state"]
            elif kind == "cached":
                nodes.record_cache(db, message["node_id"], message["key"])
            elif kind == "event":
                self._apply_event(db, job, handler, attempt, message)
        if len(metrics) > MAX_METRIC_POINTS:  # keep the curve's shape: thin the older half
            half = len(metrics) // 2
            metrics = metrics[:half:2] + metrics[half:]
        if metrics != job.metrics:
            job.metrics = metrics

    def _apply_event(self, db: Session, job: Job, handler: type[JobHandler] | None, attempt: int,
                     message: dict[str, Any]) -> None:
        seq = int(message["seq"])
        exists = db.scalar(select(func.count()).where(JobEvent.job_id == job.id, JobEvent.attempt == attempt,
                                                      JobEvent.seq == seq))
        if exists:
            return  # a replay
        event = message["event"]
        db.add(JobEvent(job_id=job.id, attempt=attempt, seq=seq, type=str(event.get("type", "event"))[:40],
                        data=event))
        db.flush()
        if handler is not None:
            handler().on_event(db, job, event)
        self.stats.events += 1

    # -- finished work --------------------------------------------------------------------------
    def _collect_finished(self) -> None:
        if not self.tracked:
            return
        by_ref = {r.ref: r for r in self.tracked.values()}
        ready, _ = ray.wait(list(by_ref), num_returns=len(by_ref), timeout=0)
        if not ready:
            return
        outcomes: dict[Any, tuple[Any, RayError | None]] = {}
        for ref in ready:
            try:
                outcomes[ref] = (ray.get(ref), None)
            except RayError as exc:
                outcomes[ref] = (None, exc)
        # A worker sends its reports to the sink while it runs and returns the rest with its outcome: the
        # sink is drained first, so they are written before (or, for a success, with) the outcome. Only
        # if one of these workers used the sink: a short job never does, which saves a call per job.
        held: dict[tuple[str, int], list[dict[str, Any]]] = {}
        if any(not isinstance(out, dict) or out.get("pushed", True) for out, _ in outcomes.values()):
            held = self._apply_reports(hold=frozenset(by_ref[ref].job_id for ref in ready))
        for ref in ready:
            running = by_ref[ref]
            self._untrack(running)
            reports = held.pop((running.job_id, running.attempt), [])
            out, lost = outcomes[ref]
            if isinstance(out, dict) and out.get("reports"):  # the last reports come with the outcome
                reports = sorted(reports + list(out["reports"]), key=lambda m: m["seq"])
            if reports and (lost is not None or "error" in out):
                self._apply_batch(running.job_id, running.attempt, reports)
                reports = []
            if isinstance(lost, TaskCancelledError):
                if running.cancel_sent_at is None:
                    self._retry_or_fail(running.job_id, running.attempt, "Its Ray task was cancelled.")
                continue
            if isinstance(lost, RayTaskError):  # the task body itself raised (not the handler: run_job catches that)
                self._finish_failed(running.job_id, running.attempt, f"The job stopped with an error: {lost}"[:2000])
                continue
            if lost is not None:  # node died, worker crashed, out of memory, object lost …
                if isinstance(lost, NodeDiedError | TaskUnschedulableError):
                    self._node_lost(running.node_id)
                if running.cancel_sent_at is None:
                    self._retry_or_fail(running.job_id, running.attempt, _system_reason(lost))
                continue
            assert out is not None
            if "error" in out:
                self._finish_failed(running.job_id, running.attempt, str(out["error"]))
            else:
                self._finish_succeeded(running.job_id, running.attempt, out.get("result") or {},
                                       out.get("node_id") or running.node_id, reports)
        for (job_id, attempt), batch in held.items():  # reports of an attempt that is no longer tracked
            self._apply_batch(job_id, attempt, batch)

    def _node_lost(self, node_id: str) -> None:
        self.lost_nodes[node_id] = time.monotonic()
        view = self.views.get(node_id)
        if view is not None:
            view.alive = False
        self._next_sync = 0.0

    def _untrack(self, running: Running) -> None:
        self.tracked.pop(running.job_id, None)
        view = self.views.get(running.node_id)
        if view is not None:
            view.release(running.request)

    def _finish_succeeded(self, job_id: str, attempt: int, result: dict[str, Any], node_id: str,
                          reports: list[dict[str, Any]] | None = None) -> None:
        with self.sessions() as db:
            job = self._lock_running(db, job_id, attempt)
            if job is None:  # cancelled meanwhile (then nothing is created after the cancel) or superseded
                return
            handler = handler_for(job.kind)
            try:
                self._apply_messages(db, job, attempt, reports or [])
                if handler is not None:
                    handler().on_success(db, job, result)
            except Exception as exc:
                db.rollback()
                if reports:  # what the worker reported still counts (its events, its log)
                    self._apply_batch(job_id, attempt, reports)
                reason = exc.args[0] if isinstance(exc, JobFailed) and exc.args else \
                    f"The job finished but its results could not be saved: {type(exc).__name__}: {exc}"
                self._finish_failed(job_id, attempt, str(reason)[:2000])
                return
            now = utcnow()
            job.status, job.result, job.progress, job.finished_at, job.eta_s = "succeeded", result, 1.0, now, 0.0
            job.stage = "finished"
            db.add(JobEvent(job_id=job_id, attempt=attempt, seq=OUTCOME_SEQ, type="succeeded",
                            data={"node_id": node_id}))
            if job.affinity_key:
                nodes.record_cache(db, node_id, job.affinity_key)
            db.commit()
        self.stats.succeeded += 1

    def _finish_failed(self, job_id: str, attempt: int, reason: str) -> None:
        with self.sessions() as db:
            job = self._lock_running(db, job_id, attempt)
            if job is None:
                return
            self._fail(db, job, reason)
            db.commit()

    def _fail(self, db: Session, job: Job, reason: str) -> None:
        handler = handler_for(job.kind)
        if handler is not None:
            try:
                handler().on_failure(db, job, reason)
            except Exception:
                log.exception("on_failure of job %s raised", job.id)
        job.status, job.error, job.finished_at, job.eta_s = "failed", reason, utcnow(), None
        job.stage = "failed"
        db.add(JobEvent(job_id=job.id, attempt=job.attempt, seq=OUTCOME_SEQ, type="failed", data={"reason": reason}))
        self.stats.failed += 1

    def _retry_or_fail(self, job_id: str, attempt: int, reason: str) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id, populate_existing=True)
            if job is None or job.status != "running" or job.attempt != attempt:
                return
            if job.cancel_requested:
                self._mark_cancelled(db, job)
            elif job.attempt < job.max_attempts:
                requeued = db.execute(update(Job).where(Job.id == job_id, Job.status == "running",
                                                        Job.attempt == attempt)
                                      .values(status="queued", node_id=None, queued_at=utcnow(), updated_at=utcnow(),
                                              stage=f"waiting to retry: {reason}"[:200]))
                if not requeued.rowcount:
                    db.rollback()
                    return
                db.refresh(job)
                _append_log(job, f"attempt {attempt} lost: {reason}")
                self.stats.retried += 1
            else:
                self._fail(db, job, f"{reason} The job was tried {attempt} times; giving up.")
            db.commit()

    # -- cancel ---------------------------------------------------------------------------------
    def _mark_cancelled(self, db: Session, job: Job) -> None:
        handler = handler_for(job.kind)
        if handler is not None:
            try:
                handler().on_cancel(db, job)
            except Exception:
                log.exception("on_cancel of job %s raised", job.id)
        job.status, job.finished_at, job.stage, job.eta_s = "cancelled", utcnow(), "cancelled", None
        self.stats.cancelled += 1

    def _handle_cancels(self) -> None:
        now = time.monotonic()
        for running in list(self.tracked.values()):  # escalate cancels the task did not honour
            if running.cancel_sent_at and not running.forced and now - running.cancel_sent_at > \
                    self.settings.cancel_grace_s:
                ray.cancel(running.ref, force=True)
                running.forced = True
        with self.sessions() as db:
            wanted = db.execute(select(Job.id, Job.attempt).where(Job.status == "running",
                                                                  Job.cancel_requested.is_(True))).all()
        for job_id, attempt in wanted:
            running = self.tracked.get(job_id)
            self._tell_sink("cancel", job_id, attempt)
            if running is not None and running.cancel_sent_at is None:
                running.cancel_sent_at = now
                ray.cancel(running.ref, force=False)
            with self.sessions() as db:
                job = db.get(Job, job_id, populate_existing=True)
                if job is not None and job.status == "running" and job.attempt == attempt:
                    self._mark_cancelled(db, job)
                    db.commit()

    # -- claiming and placement -----------------------------------------------------------------
    def _queue(self, db: Session) -> list[Any]:
        """The queued jobs (placement columns), oldest first.

        Reads only the jobs queued after the newest one known, plus a count: when the count disagrees
        with what that gives (a job committed out of id order, requeued, or cancelled meanwhile), the
        whole queue is read again. A burst of hundreds of jobs then costs a few rows per pass instead of
        re-reading (and re-parsing) the whole queue each time a job finishes. A whole read every few
        seconds bounds what a coincidence (one job cancelled, another committed late) could hide."""
        now = time.monotonic()
        whole = not self.queue or now >= self._next_queue_read  # an empty mirror: one query, as cheap
        if not whole:
            newer = db.execute(_QUEUED_AFTER, {"after": max(self.queue)})
            self.queue.update((row.id, row) for row in newer)
            whole = db.execute(_QUEUED_COUNT).scalar_one() != len(self.queue)
        if whole:
            self.queue = {row.id: row for row in db.execute(_QUEUED_AFTER, {"after": ""})}
            self._next_queue_read = now + QUEUE_READ_INTERVAL_S
        return [self.queue[k] for k in sorted(self.queue)]

    def _claim(self) -> None:
        limit = self.settings.jobs_max_running_per_user
        with self.sessions() as db:
            queued = self._queue(db)
            if not queued:
                return
            self._refresh_drain_flags(db)
            cached = nodes.cached_on(db, {j.affinity_key for j in queued if j.affinity_key})
        # This dispatcher holds the lease, so what it tracks is what runs (reconcile retried the rest).
        running_per_user: dict[str, int] = defaultdict(int)
        for running in self.tracked.values():
            running_per_user[running.owner_id] += 1
        by_user: dict[str, list[Any]] = defaultdict(list)
        for job in queued:
            by_user[job.owner_id].append(job)
        now_wall = utcnow()
        stages: dict[str, str] = {}
        waits: dict[tuple, str] = {}  # placements known not to fit in this pass (starting jobs only fills nodes)
        progress = True
        while progress:
            progress = False
            # Round-robin: users with fewer running jobs first, then whoever was served longest ago.
            for user in sorted(by_user, key=lambda u: (running_per_user[u], self.last_served.get(u, 0.0))):
                if running_per_user[user] >= limit or not by_user[user]:
                    continue
                for job in list(by_user[user]):
                    outcome = self._try_start(job, cached.get(job.affinity_key or "", set()), now_wall, stages, waits)
                    if outcome is None:
                        continue
                    by_user[user].remove(job)
                    self.queue.pop(job.id, None)
                    if outcome:
                        running_per_user[user] += 1
                        self.last_served[user] = time.monotonic()
                        progress = True
                    break
        if limit:
            for user, jobs in by_user.items():
                if running_per_user[user] >= limit:
                    for job in jobs:
                        stages[job.id] = f"waiting: you already have {limit} jobs running"
        # Why a job waits is written once it has waited a moment: in a burst most jobs start within a
        # second, and hundreds of stage writes would only contend with the API for the database.
        fresh = {job.id for job in queued if (now_wall - job.queued_at).total_seconds() < WAIT_STAGE_AFTER_S}
        self._write_wait_stages({k: v for k, v in stages.items() if k not in fresh})

    def _try_start(self, job: Any, cached_on: set[str], now_wall: datetime, stages: dict[str, str],
                   waits: dict[tuple, str]) -> bool | None:
        """None: it waits (stage noted). True: started. False: it left the queue another way.

        ``waits`` remembers the placements that found no room earlier in this pass: nodes only fill up
        during a pass, so a job shaped like one that waited waits too, without asking again. A queue
        of hundreds of alike jobs then costs one placement per tick, not one per job."""
        handler = handler_for(job.kind)
        if handler is None:
            self._fail_queued(job.id, f"This server cannot run jobs of the kind '{job.kind}'.")
            return False
        waited = (now_wall - job.queued_at).total_seconds()
        shape = (json.dumps(job.resources, sort_keys=True), str(job.placement), frozenset(cached_on),
                 waited < self.settings.affinity_wait_s)
        if shape in waits:
            stages[job.id] = waits[shape]
            return None
        decision = choose_node(list(self.views.values()), Resources.from_dict(job.resources), job.placement,
                               cached_on=cached_on, waited_s=waited, affinity_wait_s=self.settings.affinity_wait_s)
        if decision.node_id is None:
            stages[job.id] = waits[shape] = decision.reason
            return None
        return self._start(job.id, job.owner_id, handler, decision.node_id, decision.request)

    def _write_wait_stages(self, stages: dict[str, str]) -> None:
        changed = {k: v for k, v in stages.items() if self.wait_reasons.get(k) != v}
        if not changed:
            return
        by_stage: dict[str, list[str]] = defaultdict(list)
        for job_id, stage in changed.items():
            by_stage[stage].append(job_id)
        with self.sessions() as db:
            for stage, ids in by_stage.items():
                db.execute(update(Job).where(Job.id.in_(ids), Job.status == "queued").values(stage=stage)
                           .execution_options(synchronize_session=False))
            db.commit()
        self.wait_reasons.update(changed)

    def _fail_queued(self, job_id: str, reason: str) -> None:
        with self.sessions() as db:
            job = db.get(Job, job_id, populate_existing=True)
            if job is not None and job.status == "queued":
                self._fail(db, job, reason)
                db.commit()

    def _start(self, job_id: str, owner_id: str, handler: type[JobHandler], node_id: str,
               request: dict[str, float]) -> bool:
        with self.sessions() as db:
            job = db.get(Job, job_id, populate_existing=True)
            if job is None or job.status != "queued" or job.cancel_requested:
                return False
            try:
                payload = handler().prepare(db, job)
                json.dumps(payload)
            except Exception as exc:
                db.rollback()
                reason = str(exc) if isinstance(exc, JobFailed) else \
                    f"The job could not be prepared: {type(exc).__name__}: {exc}"
                self._fail_queued(job_id, reason[:2000])
                return False
            now = utcnow()
            claimed = db.execute(update(Job).where(Job.id == job_id, Job.status == "queued",
                                                   Job.cancel_requested.is_(False))
                                 .values(status="running", attempt=Job.attempt + 1, node_id=node_id,
                                         started_at=func.coalesce(Job.started_at, now), updated_at=now,
                                         stage="starting")
                                 .returning(Job.attempt, Job.checkpoint, Job.kind)
                                 .execution_options(synchronize_session=False)).first()
            if claimed is None:
                db.rollback()
                return False
            db.commit()
            attempt, checkpoint, kind = claimed
        self.wait_reasons.pop(job_id, None)
        env = {"cache_dir": self.cache_dir, "cache_max_bytes": self.settings.cache_max_bytes,
               "blob_url": self.settings.resolved_blob_url, "checkpoint": checkpoint, "namespace": self.namespace}
        custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = dict(name=f"{kind} {job_id}", num_cpus=request.get("CPU", 0.0),
                                       num_gpus=request.get("GPU", 0.0),
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        if request.get("memory"):
            options["memory"] = request["memory"]
        if custom:
            options["resources"] = custom
        try:
            ref = run_job_remote.options(**options).remote(handler.import_path(), job_id, attempt, payload, env)
        except Exception as exc:
            self._retry_or_fail(job_id, attempt, f"Ray refused the job: {exc}")
            return False
        self.tracked[job_id] = Running(job_id, owner_id, attempt, kind, node_id, request, ref)
        self.views[node_id].reserve(request)
        self.stats.started += 1
        return True

    # -- stopping -------------------------------------------------------------------------------
    def _requeue_own_work(self) -> None:
        """A requested stop: cancel this dispatcher's Ray work and put its jobs back in the queue without
        counting the interrupted attempt (they resume from their checkpoint under the next dispatcher)."""
        for running in list(self.tracked.values()):
            ray.cancel(running.ref, force=True)
            self._tell_sink("cancel", running.job_id, running.attempt)
            with self.sessions() as db:
                db.execute(update(Job).where(Job.id == running.job_id, Job.status == "running",
                                             Job.attempt == running.attempt)
                           .values(status="queued", attempt=Job.attempt - 1, node_id=None, queued_at=utcnow(),
                                   stage="waiting: the dispatcher restarted"))
                db.commit()
            self._untrack(running)

    def _abandon(self) -> None:
        """The lease went to another dispatcher: stop this one's Ray work and leave the DB to the new holder."""
        for running in list(self.tracked.values()):
            ray.cancel(running.ref, force=True)
            self._untrack(running)


def _system_reason(exc: RayError) -> str:
    name = type(exc).__name__
    if "NodeDied" in name:
        return "The compute node running the job stopped."
    if "OutOfMemory" in name:
        return "The compute node ran out of memory."
    if "WorkerCrashed" in name or "ActorDied" in name:
        return "The worker process running the job stopped."
    return f"Ray lost the job's work ({name})."
