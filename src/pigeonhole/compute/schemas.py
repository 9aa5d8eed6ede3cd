"""Admin views of compute: nodes and their load, and the self-test job."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from pigeonhole.db.tables import ComputeNode


class NodeResources(BaseModel):
    cpus: float
    gpus: float
    memory_bytes: int
    custom: dict[str, float] = Field(description="custom Ray resources, e.g. a node class marker")


class NodePublic(BaseModel):
    id: str
    address: str
    hostname: str | None
    state: str = Field(description="alive or dead")
    draining: bool = Field(description="no new work is placed here; running work finishes")
    node_class: str = Field(description="gpu or cpu")
    total: NodeResources
    available: NodeResources = Field(description="total minus what running jobs reserved")
    cache_used_bytes: int | None
    cache_free_bytes: int | None
    running_jobs: list[str]
    cached_datasets: list[str]
    cached_models: list[str]
    last_seen_at: datetime


class SelfTestCreate(BaseModel):
    steps: int = Field(10, ge=1, le=100_000)
    step_s: float = Field(0.05, ge=0, le=60)
    busy: bool = Field(False, description="burn CPU instead of sleeping (simulates training)")
    num_cpus: float = Field(1.0, gt=0, le=256, description="CPUs it asks Ray for")
    dataset_id: str | None = Field(None, max_length=26, description="affinity key to exercise placement")


def _resources(values: dict[str, float]) -> NodeResources:
    custom = {k: v for k, v in values.items() if k not in ("CPU", "GPU", "memory")}
    return NodeResources(cpus=values.get("CPU", 0.0), gpus=values.get("GPU", 0.0),
                         memory_bytes=int(values.get("memory", 0)), custom=custom)


def node_public(node: ComputeNode, running: list[str], cached: list[str]) -> NodePublic:
    return NodePublic(
        id=node.id, address=node.address, hostname=node.hostname, state="alive" if node.alive else "dead",
        draining=node.draining, node_class=node.node_class, total=_resources(node.resources_total),
        available=_resources(node.resources_available), cache_used_bytes=node.cache_used_bytes,
        cache_free_bytes=node.cache_free_bytes, running_jobs=running,
        cached_datasets=[k.split(":", 1)[1] for k in cached if k.startswith("dataset:")],
        cached_models=[k.split(":", 1)[1] for k in cached if k.startswith("model:")],
        last_seen_at=node.last_seen_at,
    )
