"""The placement policy as a pure function (no Ray): classes, fit, affinity wait, drain, death."""

from __future__ import annotations

from pigeonhole.compute.handlers import Placement, Resources, handler_for, kinds
from pigeonhole.compute.placement import NodeView, choose_node


def _nodes() -> list[NodeView]:
    return [NodeView("gpu1", True, False, "gpu", {"CPU": 4, "GPU": 1}),
            NodeView("cpu1", True, False, "cpu", {"CPU": 4}),
            NodeView("cpu2", True, False, "cpu", {"CPU": 4})]


def test_declared_kinds_and_their_placement() -> None:
    assert {"train", "expand", "import", "batch-predict", "retrain", "selftest"} <= set(kinds())
    assert handler_for("train").placement is handler_for("retrain").placement is Placement.GPU_PREFERRED
    assert handler_for("import").placement is handler_for("batch-predict").placement is Placement.CPU
    assert handler_for("nope") is None


def test_training_prefers_gpu_nodes_and_falls_back_to_cpu_without_any() -> None:
    nodes = _nodes()
    decision = choose_node(nodes, Resources(num_cpus=1, num_gpus=1), Placement.GPU_PREFERRED, cached_on=set(),
                           waited_s=0, affinity_wait_s=30)
    assert decision.node_id == "gpu1" and decision.request == {"CPU": 1, "GPU": 1}
    cpu_only = [n for n in nodes if n.node_class == "cpu"]
    decision = choose_node(cpu_only, Resources(num_cpus=1, num_gpus=1), Placement.GPU_PREFERRED, cached_on=set(),
                           waited_s=0, affinity_wait_s=30)
    assert decision.node_id in {"cpu1", "cpu2"} and "GPU" not in decision.request


def test_cpu_work_avoids_gpu_nodes_and_spreads_by_load() -> None:
    nodes = _nodes()
    nodes[1].reserve({"CPU": 3})
    decision = choose_node(nodes, Resources(num_cpus=1), Placement.CPU, cached_on=set(), waited_s=0,
                           affinity_wait_s=30)
    assert decision.node_id == "cpu2"


def test_affinity_prefers_the_cache_holder_waits_while_busy_then_falls_back() -> None:
    nodes = _nodes()
    args = dict(cached_on={"cpu1"}, affinity_wait_s=30)
    nodes[2].reserve({"CPU": 1})
    nodes[1].reserve({"CPU": 2})  # busier, but has room and the cache
    assert choose_node(nodes, Resources(num_cpus=1), Placement.CPU, waited_s=0, **args).node_id == "cpu1"
    nodes[1].reserve({"CPU": 2})  # now full
    waiting = choose_node(nodes, Resources(num_cpus=1), Placement.CPU, waited_s=5, **args)
    assert waiting.node_id is None and "holds its data" in waiting.reason
    assert choose_node(nodes, Resources(num_cpus=1), Placement.CPU, waited_s=31, **args).node_id == "cpu2"
    nodes[1].draining = True  # drained or dead: no waiting at all
    assert choose_node(nodes, Resources(num_cpus=1), Placement.CPU, waited_s=0, **args).node_id == "cpu2"
    nodes[1].draining, nodes[1].alive = False, False
    assert choose_node(nodes, Resources(num_cpus=1), Placement.CPU, waited_s=0, **args).node_id == "cpu2"


def test_nothing_fits_says_why() -> None:
    nodes = _nodes()
    too_big = choose_node(nodes, Resources(num_cpus=64), Placement.ANY, cached_on=set(), waited_s=0,
                          affinity_wait_s=1)
    assert too_big.node_id is None and "large enough" in too_big.reason
    for node in nodes:
        node.draining = True
    assert choose_node(nodes, Resources(), Placement.ANY, cached_on=set(), waited_s=0,
                       affinity_wait_s=1).node_id is None
