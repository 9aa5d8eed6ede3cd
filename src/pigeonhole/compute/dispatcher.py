"""The dispatcher: the only Ray driver. One loop, a few times a second:

1. keeps its DB lease (only the holder acts);
2. syncs the node registry from Ray (alive/dead, resources) and re-reads admin drain flags (``cluster``);
3. applies what workers reported through the progress sink (progress, metric history, log lines,
   checkpoints, cache notes, emitted events) - events exactly once per job, attempt and sequence (``reports``);
4. collects finished Ray tasks: success and failure hooks run in the transaction that ends the job;
   a lost node or worker makes the job retry (up to its attempt limit), a handler error fails it (``outcomes``);
5. cancels jobs whose cancel was requested (Ray task cancelled, job ``cancelled`` at once);
6. claims queued jobs round-robin between users, under per-user limits, and places each on a node
   (resource fit, node class, drain flags, data affinity), then submits it as a Ray task (``claiming``).

At start it reconciles: jobs left ``running`` by an earlier dispatcher have lost their Ray work (a
driver's tasks die with it), so they are retried from their last checkpoint, or failed at the limit.
Every change of a job's status goes through ``jobs.transitions``, which the API's cancel uses too.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import ray
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute import lease
from pigeonhole.compute.claiming import Claimer
from pigeonhole.compute.cluster import Cluster, Running, Stats
from pigeonhole.compute.handlers import kinds
from pigeonhole.compute.outcomes import Outcomes, collect_finished
from pigeonhole.compute.reports import Reports, Sink
from pigeonhole.db.tables import Job
from pigeonhole.ids import new_id
from pigeonhole.settings import Settings

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 15.0
REPORT_INTERVAL_S = 0.2
IDLE_CHORES_INTERVAL_S = 1.0


class Dispatcher:
    def __init__(self, settings: Settings, session_factory: sessionmaker[Session], *, holder: str | None = None,
                 namespace: str | None = None) -> None:
        self.settings = settings
        self.sessions = session_factory
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.namespace = namespace
        self.stats = Stats()
        self.cluster = Cluster(settings, session_factory, str(settings.resolved_cache_dir / "compute"))
        self.tracked: dict[str, Running] = self.cluster.tracked
        self.sink = Sink(namespace)
        self.reports = Reports(settings, session_factory, self.sink, self.stats)
        self.outcomes = Outcomes(settings, session_factory, self.stats, self.reports)
        self.claimer = Claimer(settings, session_factory, self.cluster, self.outcomes, self.stats, namespace=namespace)
        self._stop = threading.Event()
        self._lease_until = 0.0
        self._next_probe = 0.0
        self._last_chores = float("-inf")

    @property
    def queue(self) -> dict[str, Any]:
        """The queued jobs as the last claim pass read them, by id."""
        return self.claimer.queue

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
            self.sink.connect()
            self.cluster.sync()
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
        if now >= self.cluster.next_sync:
            self.cluster.sync()
            self.cluster.next_sync = now + self.settings.node_sync_interval_s
        # Claiming runs every tick (a queued job starts within one poll interval); progress reports and
        # cancels, which cost a call to the Ray sink actor, run a few times a second while work runs and
        # once a second when idle, so a short poll interval costs almost nothing on an idle machine.
        if now - self._last_chores >= (REPORT_INTERVAL_S if self.tracked else IDLE_CHORES_INTERVAL_S):
            self.reports.apply()
            self._handle_cancels()
            self._last_chores = now
        collect_finished(self.cluster, self.reports, self.outcomes)
        self.claimer.claim()
        if now >= self._next_probe:
            self.cluster.probe()
            self._next_probe = now + PROBE_INTERVAL_S
        self.cluster.collect_probes()

    # -- reconcile ------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Jobs marked running that this dispatcher does not track have lost their Ray work."""
        with self.sessions() as db:
            orphans = db.execute(select(Job.id, Job.attempt).where(Job.status == "running")).all()
        for job_id, attempt in orphans:
            if job_id in self.tracked:
                continue
            self.sink.tell("cancel", job_id, attempt)  # a stale worker, if any, stops and is ignored
            self.outcomes.retry_or_fail(job_id, attempt, "The dispatcher restarted while the job was running.")

    # -- cancel ---------------------------------------------------------------------------------
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
            self.sink.tell("cancel", job_id, attempt)
            if running is not None and running.cancel_sent_at is None:
                running.cancel_sent_at = now
                ray.cancel(running.ref, force=False)
            self.outcomes.cancelled(job_id, attempt)

    # -- stopping -------------------------------------------------------------------------------
    def _requeue_own_work(self) -> None:
        """A requested stop: cancel this dispatcher's Ray work and put its jobs back in the queue without
        counting the interrupted attempt (they resume from their checkpoint under the next dispatcher)."""
        for running in list(self.tracked.values()):
            ray.cancel(running.ref, force=True)
            self.sink.tell("cancel", running.job_id, running.attempt)
            self.outcomes.requeue_interrupted(running.job_id, running.attempt)
            self.cluster.untrack(running)

    def _abandon(self) -> None:
        """The lease went to another dispatcher: stop this one's Ray work and leave the DB to the new holder."""
        for running in list(self.tracked.values()):
            ray.cancel(running.ref, force=True)
            self.cluster.untrack(running)
