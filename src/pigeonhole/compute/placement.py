"""Where a job runs: resource fit, node class, drain flags and data affinity ("prefer, but don't wait
forever"). Pure functions over plain data, so the policy is tested without Ray."""

from __future__ import annotations

from dataclasses import dataclass, field

from pigeonhole.compute.handlers import Placement, Resources

EPSILON = 1e-9


@dataclass
class NodeView:
    id: str
    alive: bool
    draining: bool
    node_class: str  # "gpu" or "cpu"
    total: dict[str, float]
    reserved: dict[str, float] = field(default_factory=dict)  # what this dispatcher placed there

    def free(self, name: str) -> float:
        return self.total.get(name, 0.0) - self.reserved.get(name, 0.0)

    def fits(self, request: dict[str, float]) -> bool:
        return all(self.free(k) + EPSILON >= v for k, v in request.items() if v > 0)

    def load(self) -> float:
        cpus = self.total.get("CPU", 0.0)
        return self.reserved.get("CPU", 0.0) / cpus if cpus else 1.0

    def reserve(self, request: dict[str, float]) -> None:
        for k, v in request.items():
            self.reserved[k] = self.reserved.get(k, 0.0) + v

    def release(self, request: dict[str, float]) -> None:
        for k, v in request.items():
            self.reserved[k] = max(0.0, self.reserved.get(k, 0.0) - v)


def node_class(total: dict[str, float], gpu_class_resource: str) -> str:
    return "gpu" if total.get("GPU", 0) > 0 or total.get(gpu_class_resource, 0) > 0 else "cpu"


def ray_request(resources: Resources, node: NodeView | None = None) -> dict[str, float]:
    """Resources in Ray's names. A GPU request is dropped on a CPU-class node (training runs on CPU there)."""
    request = {"CPU": resources.num_cpus, "GPU": resources.num_gpus, "memory": float(resources.memory or 0)}
    request.update(resources.custom)
    if node is not None and node.total.get("GPU", 0) <= 0:
        request["GPU"] = 0.0
    return {k: v for k, v in request.items() if v > 0}


@dataclass(frozen=True)
class Decision:
    node_id: str | None
    reason: str  # why it waits (shown as the job's stage) or why this node
    request: dict[str, float] = field(default_factory=dict)


def choose_node(nodes: list[NodeView], resources: Resources, placement: Placement | str, *,
                cached_on: set[str], waited_s: float, affinity_wait_s: float) -> Decision:
    eligible = [n for n in nodes if n.alive and not n.draining]
    if not eligible:
        return Decision(None, "waiting for a compute node")
    capable = [n for n in eligible
               if all(n.total.get(k, 0.0) + EPSILON >= v for k, v in ray_request(resources, n).items())]
    if not capable:
        return Decision(None, "waiting: no compute node is large enough for this job")
    placement = Placement(placement)
    if placement is Placement.ANY:
        candidates = capable
    else:
        wanted = "gpu" if placement is Placement.GPU_PREFERRED else "cpu"
        candidates = [n for n in capable if n.node_class == wanted] or capable
    candidates = sorted(candidates, key=lambda n: (n.load(), n.id))

    preferred = [n for n in candidates if n.id in cached_on]
    for node in preferred:
        request = ray_request(resources, node)
        if node.fits(request):
            return Decision(node.id, "its data is cached on this node", request)
    if preferred and waited_s < affinity_wait_s:
        return Decision(None, "waiting for the node that holds its data")

    for node in candidates:
        request = ray_request(resources, node)
        if node.fits(request):
            return Decision(node.id, "least loaded node with room", request)
    return Decision(None, "waiting for a free compute node")
