"""Connecting the dispatcher to Ray: an existing cluster (``PIGEONHOLE_RAY_ADDRESS``) or a local
runtime started here (separate processes on this machine, bound to 127.0.0.1)."""

from __future__ import annotations

import logging
import os

from pigeonhole.settings import Settings

log = logging.getLogger(__name__)
NAMESPACE = "pigeonhole"


def prepare_environment() -> None:
    """Before importing Ray: no usage reporting; a local runtime binds to loopback (not the LAN address).
    Token authentication stays on (Ray's default): drivers on this machine read the token file under ~/.ray."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def connect(settings: Settings) -> str:
    """``ray.init`` for the dispatcher; returns the cluster address."""
    prepare_environment()
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    common = dict(namespace=NAMESPACE, log_to_driver=False, configure_logging=False)
    if settings.ray_address:
        ray.init(address=settings.ray_address, **common)
    else:
        # address="local": always a runtime of our own, never another Ray instance found on this machine
        # (another Pigeonhole, or a test cluster), which would mix up jobs and fail to connect.
        ray.init(address="local", num_cpus=settings.ray_num_cpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **common)
    address = ray.get_runtime_context().gcs_address
    log.info("connected to Ray at %s", address)
    return address


def disconnect() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
