"""The dispatcher's picture of its Ray cluster: node views with what it reserved on each, the attempts it
runs, nodes it saw die, and cache-disk probes.

Placement fits a job against the dispatcher's own reservations: it holds the lease, so what it tracks is
every job that runs. ``ray.nodes()`` reports a dead node alive for a while after a task died of it, so
such a node stays out of placement for ``LOST_NODE_QUARANTINE_S``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pigeonhole.compute import nodes
from pigeonhole.compute.placement import NodeView
from pigeonhole.compute.worker import probe_node_remote
from pigeonhole.db.tables import ComputeNode
from pigeonhole.settings import Settings

LOST_NODE_QUARANTINE_S = 60.0


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

    def count(self, outcome: str | None) -> None:
        if outcome is not None:
            setattr(self, outcome, getattr(self, outcome) + 1)


class Cluster:
    def __init__(self, settings: Settings, sessions: sessionmaker[Session], cache_dir: str) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cache_dir = cache_dir
        self.views: dict[str, NodeView] = {}
        self.tracked: dict[str, Running] = {}  # job id -> the attempt this dispatcher runs
        self.lost_nodes: dict[str, float] = {}  # node id -> when Ray said it died (ray.nodes() lags behind)
        self.next_sync = 0.0
        self._probes: dict[Any, str] = {}

    # -- the attempts this dispatcher runs ------------------------------------------------------
    def track(self, running: Running) -> None:
        self.tracked[running.job_id] = running
        self.views[running.node_id].reserve(running.request)

    def untrack(self, running: Running) -> None:
        self.tracked.pop(running.job_id, None)
        view = self.views.get(running.node_id)
        if view is not None:
            view.release(running.request)

    def running_per_user(self) -> defaultdict[str, int]:
        counts: defaultdict[str, int] = defaultdict(int)
        for running in self.tracked.values():
            counts[running.owner_id] += 1
        return counts

    # -- nodes ----------------------------------------------------------------------------------
    def sync(self) -> None:
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

    def refresh_drain_flags(self, db: Session) -> None:
        for node_id, draining in db.execute(select(ComputeNode.id, ComputeNode.draining)):
            if node_id in self.views:
                self.views[node_id].draining = draining

    def node_lost(self, node_id: str) -> None:
        self.lost_nodes[node_id] = time.monotonic()
        view = self.views.get(node_id)
        if view is not None:
            view.alive = False
        self.next_sync = 0.0

    # -- cache-disk probes ----------------------------------------------------------------------
    def probe(self) -> None:
        pending = set(self._probes.values())
        for view in self.views.values():
            if view.alive and view.id not in pending:
                ref = probe_node_remote.options(
                    scheduling_strategy=NodeAffinitySchedulingStrategy(view.id, soft=False)).remote(self.cache_dir)
                self._probes[ref] = view.id

    def collect_probes(self) -> None:
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
