"""Claiming queued jobs: round-robin between users under the per-user limit, placed by
``placement.choose_node`` and submitted as one Ray task per attempt with a hard affinity to that node.

The cost of a claim pass does not grow with the queue: the queue is kept as last read, a pass asks
placement once per job shape, and why a job waits is written only once it has waited a moment.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute import nodes
from pigeonhole.compute.cluster import Cluster, Running, Stats
from pigeonhole.compute.handlers import JobFailed, JobHandler, Resources, handler_for
from pigeonhole.compute.outcomes import Outcomes
from pigeonhole.compute.placement import choose_node
from pigeonhole.compute.worker import run_job_remote
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Job
from pigeonhole.jobs import transitions
from pigeonhole.settings import Settings

_CLAIM_COLUMNS = (Job.id, Job.owner_id, Job.kind, Job.resources, Job.placement, Job.affinity_key, Job.queued_at)
_QUEUED_AFTER = select(*_CLAIM_COLUMNS).where(Job.status == "queued", Job.id > bindparam("after")).order_by(Job.id)
_QUEUED_COUNT = select(func.count()).select_from(Job).where(Job.status == "queued")
WAIT_STAGE_AFTER_S = 1.0
QUEUE_READ_INTERVAL_S = 5.0

Shape = tuple[str, str, frozenset[str], bool]  # resources, placement, nodes caching its data, may still wait


class Claimer:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], cluster: Cluster, outcomes: Outcomes,
                 stats: Stats, *, namespace: str | None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cluster = cluster
        self.outcomes = outcomes
        self.stats = stats
        self.namespace = namespace
        self.last_served: dict[str, float] = {}
        self.wait_reasons: dict[str, str] = {}
        # The queue as last read (placement columns only), so a claim pass reads only what is new: see _queue.
        self.queue: dict[str, Any] = {}
        self._next_queue_read = 0.0

    def claim(self) -> None:
        limit = self.settings.jobs_max_running_per_user
        with self.sessions() as db:
            queued = self._queue(db)
            if not queued:
                return
            self.cluster.refresh_drain_flags(db)
            cached = nodes.cached_on(db, {j.affinity_key for j in queued if j.affinity_key})
        # This dispatcher holds the lease, so what it tracks is what runs (reconcile retried the rest).
        running_per_user = self.cluster.running_per_user()
        by_user: dict[str, list[Any]] = defaultdict(list)
        for job in queued:
            by_user[job.owner_id].append(job)
        now_wall = utcnow()
        stages: dict[str, str] = {}
        waits: dict[Shape, str] = {}  # placements known not to fit in this pass (starting jobs only fills nodes)
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

    def _try_start(self, job: Any, cached_on: set[str], now_wall: datetime, stages: dict[str, str],
                   waits: dict[Shape, str]) -> bool | None:
        """None: it waits (stage noted). True: started. False: it left the queue another way.

        ``waits`` remembers the placements that found no room earlier in this pass: nodes only fill up
        during a pass, so a job shaped like one that waited waits too, without asking again. A queue
        of hundreds of alike jobs then costs one placement per tick, not one per job."""
        handler = handler_for(job.kind)
        if handler is None:
            self.outcomes.fail_queued(job.id, f"This server cannot run jobs of the kind '{job.kind}'.")
            return False
        waited = (now_wall - job.queued_at).total_seconds()
        shape = (json.dumps(job.resources, sort_keys=True), str(job.placement), frozenset(cached_on),
                 waited < self.settings.affinity_wait_s)
        if shape in waits:
            stages[job.id] = waits[shape]
            return None
        decision = choose_node(list(self.cluster.views.values()), Resources.from_dict(job.resources), job.placement,
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

    def _start(self, job_id: str, owner_id: str, handler: type[JobHandler], node_id: str,
               request: dict[str, float]) -> bool:
        with self.sessions() as db:
            job = db.get(Job, job_id, populate_existing=True)
            if job is None or job.status != "queued" or job.cancel_requested:
                return False
            try:
                payload = handler(self.settings).prepare(db, job)
                json.dumps(payload)
            except Exception as exc:
                db.rollback()
                reason = str(exc) if isinstance(exc, JobFailed) else \
                    f"The job could not be prepared: {type(exc).__name__}: {exc}"
                self.outcomes.fail_queued(job_id, reason[:2000])
                return False
            claimed = transitions.start(db, job_id, node_id)
            if claimed is None:
                db.rollback()
                return False
            db.commit()
            attempt, checkpoint, kind = claimed
        self.wait_reasons.pop(job_id, None)
        try:
            ref = self._submit(handler, job_id, attempt, kind, payload, checkpoint, node_id, request)
        except Exception as exc:
            self.outcomes.retry_or_fail(job_id, attempt, f"Ray refused the job: {exc}")
            return False
        self.cluster.track(Running(job_id, owner_id, attempt, kind, node_id, request, ref))
        self.stats.started += 1
        return True

    def _submit(self, handler: type[JobHandler], job_id: str, attempt: int, kind: str, payload: Any,
                checkpoint: Any, node_id: str, request: dict[str, float]) -> Any:
        env = {"cache_dir": self.cluster.cache_dir, "cache_max_bytes": self.settings.cache_max_bytes,
               "blob_url": self.settings.resolved_blob_url, "checkpoint": checkpoint, "namespace": self.namespace}
        custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
        options: dict[str, Any] = dict(name=f"{kind} {job_id}", num_cpus=request.get("CPU", 0.0),
                                       num_gpus=request.get("GPU", 0.0),
                                       scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
        if request.get("memory"):
            options["memory"] = request["memory"]
        if custom:
            options["resources"] = custom
        return run_job_remote.options(**options).remote(handler.import_path(), job_id, attempt, payload, env)
