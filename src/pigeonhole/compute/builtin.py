"""The built-in job kind ``selftest``: a diagnostic job that counts, sleeps or burns CPU and reports progress.

The product kinds (train, retrain, expand, import, batch-predict) live in their domains and are
registered through ``HANDLER_MODULES``."""

from __future__ import annotations

import os
import time
from typing import Any

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register


@register
class SelfTest(JobHandler):
    """Params: ``steps`` (10), ``step_s`` (0.05), ``busy`` (burn CPU instead of sleeping), ``fail``
    (raise at the end), ``emit_every`` (emit a ``version`` event every n steps), ``cache_key``
    (report this node as caching it). Resumes from its checkpoint."""

    kind = "selftest"
    resources = Resources(num_cpus=1)
    placement = Placement.ANY
    affinity = "dataset"
    description = "diagnostic: counts with progress"

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        steps = int(payload.get("steps", 10))
        step_s = float(payload.get("step_s", 0.05))
        checkpoint = ctx.load_checkpoint() or {}
        start = int(checkpoint.get("step", 0))
        started = time.monotonic()
        ctx.report(log=f"attempt {ctx.attempt} on node {ctx.node_id} in process {os.getpid()} from step {start}")
        for i in range(start, steps):
            if ctx.cancelled():
                return {"cancelled_at": i}
            if payload.get("busy"):
                until = time.monotonic() + step_s
                while time.monotonic() < until:
                    sum(range(1000))
            else:
                time.sleep(step_s)
            done = i + 1
            per_step = (time.monotonic() - started) / max(1, done - start)
            ctx.report(progress=done / steps, stage=f"step {done} of {steps}", eta_s=per_step * (steps - done),
                       metrics={"step": done, "value": done / steps})
            # Checkpoint first: emit sends both together, so they are applied in one transaction.
            ctx.save_checkpoint({"step": done})
            every = int(payload.get("emit_every", 0))
            if every and done % every == 0 and done < steps:
                ctx.emit({"type": "version", "step": done})
        if payload.get("cache_key"):
            key = str(payload["cache_key"])
            ctx.cache.put_bytes(f"selftest/{key.replace(':', '_')}", b"cached by the self-test")
            ctx.cached(key)
        if payload.get("fail"):
            raise JobFailed("The self-test was asked to fail.")
        return {"steps": steps, "resumed_from": start, "node_id": ctx.node_id, "pid": os.getpid(),
                "niceness": os.nice(0)}
