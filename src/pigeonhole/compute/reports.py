"""What workers report while they run (progress, metric points, log lines, checkpoints, cache notes,
emitted events), drained from the progress sink and written into the job's row.

Workers never write the database: they push messages to a named actor, and the dispatcher applies each
job's messages in one transaction that holds the job's row, so nothing lands after a cancel. Emitted
events are recorded under a unique (job, attempt, seq) key, which makes ``on_event`` run once per event
even when a message is replayed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import ray
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute import nodes
from pigeonhole.compute.cluster import Stats
from pigeonhole.compute.handlers import JobHandler, handler_for
from pigeonhole.compute.worker import get_sink
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import Job, JobEvent
from pigeonhole.jobs import transitions
from pigeonhole.settings import Settings

log = logging.getLogger(__name__)

MAX_METRIC_POINTS = 2000

Message = dict[str, Any]
Held = dict[tuple[str, int], list[Message]]  # (job id, attempt) -> its messages in order


class Sink:
    """The dispatcher's handle on the progress sink. The actor restarts after a failure, so a call that
    fails looks it up again; a lost note is sent again by the next call."""

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace
        self.actor: Any = None

    def connect(self) -> None:
        self.actor = get_sink(self.namespace)

    def tell(self, method: str, *args: Any) -> None:
        try:
            getattr(self.actor, method).remote(*args)
        except Exception:
            self.connect()

    def drain(self) -> list[Message] | None:
        """Every message pushed since the last drain; None when the sink did not answer."""
        try:
            messages = ray.get(self.actor.drain.remote(), timeout=10)
        except Exception:
            log.warning("the progress sink did not answer; looking it up again")
            self.connect()
            return None
        return messages or []


class Reports:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], sink: Sink, stats: Stats) -> None:
        self.settings = settings
        self.sessions = sessions
        self.sink = sink
        self.stats = stats

    def apply(self, hold: frozenset[str] = frozenset()) -> Held:
        """Apply what workers reported; the reports of the jobs in ``hold`` (finished ones) are returned
        instead, to be written in the transaction that records the job's outcome (one instead of two)."""
        messages = self.sink.drain()
        if messages is None:
            return {}
        groups: Held = defaultdict(list)
        for message in messages:
            groups[(message["job_id"], int(message["attempt"]))].append(message)
        held: Held = {}
        for (job_id, attempt), batch in groups.items():
            batch.sort(key=lambda m: m["seq"])
            if job_id in hold:
                held[(job_id, attempt)] = batch
                continue
            try:
                self.apply_batch(job_id, attempt, batch)
            except Exception:
                log.exception("could not apply reports of job %s", job_id)
        return held

    def apply_batch(self, job_id: str, attempt: int, batch: list[Message]) -> None:
        with self.sessions() as db:
            job = transitions.lock_running(db, job_id, attempt)
            if job is None:
                return
            self.write(db, job, attempt, batch)
            db.commit()

    def write(self, db: Session, job: Job, attempt: int, batch: list[Message]) -> None:
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
                transitions.append_log(job, message["line"])
            elif kind == "checkpoint":
                job.checkpoint = message["state"]
            elif kind == "cached":
                nodes.record_cache(db, message["node_id"], message["key"])
            elif kind == "event":
                self._event(db, job, handler, attempt, message)
        if len(metrics) > MAX_METRIC_POINTS:  # keep the curve's shape: thin the older half
            half = len(metrics) // 2
            metrics = metrics[:half:2] + metrics[half:]
        if metrics != job.metrics:
            job.metrics = metrics

    def _event(self, db: Session, job: Job, handler: type[JobHandler] | None, attempt: int,
               message: Message) -> None:
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
            handler(self.settings).on_event(db, job, event)
        self.stats.events += 1
