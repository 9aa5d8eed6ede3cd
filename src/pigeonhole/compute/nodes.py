"""The node registry: compute nodes as the dispatcher saw them, admin drain flags, and which node
caches which dataset or model. No Ray here: the dispatcher passes plain node dicts in."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from pigeonhole.compute.placement import node_class
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import ComputeNode, Job, NodeCacheEntry

INTERNAL_RESOURCE_PREFIXES = ("node:", "object_store_memory", "accelerator_type:")
DEAD_NODE_RETENTION_S = 24 * 3600.0  # a dead node stays in the admin view this long (what died, and when)


def clean_resources(resources: dict[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in resources.items() if not k.startswith(INTERNAL_RESOURCE_PREFIXES)}


def sync_nodes(db: Session, ray_nodes: list[dict[str, Any]], gpu_class_resource: str,
               forget_dead_after_s: float = DEAD_NODE_RETENTION_S) -> list[ComputeNode]:
    """Upsert what ``ray.nodes()`` says; keep ``draining`` as admins set it. Returns every known node.

    A node dead for longer than ``forget_dead_after_s`` with no job recorded as running on it is forgotten
    (with its cache notes): every restart of a local runtime or a worker machine gets a new Ray node id, and
    the admin view would otherwise list every node that ever existed."""
    now = utcnow()
    stale = set(db.scalars(select(ComputeNode.id).where(
        ComputeNode.alive.is_(False), ComputeNode.last_seen_at < now - timedelta(seconds=forget_dead_after_s))))
    if stale:
        stale -= set(db.scalars(select(Job.node_id).where(Job.status == "running", Job.node_id.in_(stale))))
    if stale:
        db.execute(delete(NodeCacheEntry).where(NodeCacheEntry.node_id.in_(stale)))
        db.execute(delete(ComputeNode).where(ComputeNode.id.in_(stale)))
    known = {n.id: n for n in db.scalars(select(ComputeNode))}
    seen = set()
    for info in ray_nodes:
        node_id = info["NodeID"]
        seen.add(node_id)
        total = clean_resources(info.get("Resources") or {})
        alive = bool(info.get("Alive"))
        node = known.get(node_id)
        if node is None and not alive:  # never seen alive, or already forgotten: nothing to show
            continue
        if node is None:
            node = ComputeNode(id=node_id, address=str(info.get("NodeManagerAddress", "")),
                               hostname=info.get("NodeManagerHostname"), draining=False, first_seen_at=now,
                               resources_total=total, resources_available=total)
            db.add(node)
            known[node_id] = node
        node.alive = alive
        if total or not alive:
            node.resources_total = total or node.resources_total
        node.node_class = node_class(node.resources_total, gpu_class_resource)
        if alive:
            node.last_seen_at = now
    for node_id, node in known.items():
        if node_id not in seen and node.alive:
            node.alive = False
    db.flush()
    return list(known.values())


def set_draining(db: Session, node_id: str, draining: bool) -> ComputeNode | None:
    db.execute(update(ComputeNode).where(ComputeNode.id == node_id).values(draining=draining))
    return db.get(ComputeNode, node_id)


def record_cache(db: Session, node_id: str, key: str, at: datetime | None = None) -> None:
    if db.get(ComputeNode, node_id) is None:
        return
    entry = db.get(NodeCacheEntry, (node_id, key))
    if entry is None:
        db.add(NodeCacheEntry(node_id=node_id, key=key, used_at=at or utcnow()))
    else:
        entry.used_at = at or utcnow()
    db.flush()


def cached_on(db: Session, keys: set[str]) -> dict[str, set[str]]:
    if not keys:
        return {}
    found: dict[str, set[str]] = defaultdict(set)
    for node_id, key in db.execute(select(NodeCacheEntry.node_id, NodeCacheEntry.key)
                                   .where(NodeCacheEntry.key.in_(keys))):
        found[key].add(node_id)
    return found


def nodes_for_admin(db: Session) -> list[tuple[ComputeNode, list[str], list[str]]]:
    """Each node with its running job ids and cache keys, alive nodes first."""
    nodes = list(db.scalars(select(ComputeNode).order_by(ComputeNode.alive.desc(), ComputeNode.first_seen_at)))
    running: dict[str, list[str]] = defaultdict(list)
    for job_id, node_id in db.execute(select(Job.id, Job.node_id).where(Job.status == "running")):
        if node_id:
            running[node_id].append(job_id)
    cached: dict[str, list[str]] = defaultdict(list)
    for node_id, key in db.execute(select(NodeCacheEntry.node_id, NodeCacheEntry.key)
                                   .order_by(NodeCacheEntry.used_at.desc())):
        cached[node_id].append(key)
    return [(n, running.get(n.id, []), cached.get(n.id, [])) for n in nodes]
