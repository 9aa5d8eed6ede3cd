"""The built-in job kind ``selftest``: a diagnostic job that counts, sleeps or burns CPU and reports progress.

The product kinds (train, retrain, expand, import, batch-predict) live in their domains and are
registered through ``HANDLER_MODULES``."""

from __future__ import annotations

import os
import time
from typing import Any

from pigeonhole.compute.handlers import JobContext, JobFailed, JobHandler, Placement, Resources, register
from pigeonhole.jobs.contract import JobContract


class SelfTestParams(JobContract):
    """The self-test's params (also its payload: ``prepare`` passes them through)."""

    steps: int = 10
    step_s: float = 0.05
    busy: bool = False  # burn CPU instead of sleeping
    fail: bool = False  # raise at the end
    emit_every: int = 0  # emit a ``version`` event every n steps
    cache_key: str | None = None  # report this node as caching it


@register
class SelfTest(JobHandler):
    """Counts ``steps`` with progress; resumes from its checkpoint (see :class:`SelfTestParams`)."""

    kind = "selftest"
    resources = Resources(num_cpus=1)
    placement = Placement.ANY
    affinity = "dataset"
    description = "diagnostic: counts with progress"

    def run(self, ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
        params = SelfTestParams.model_validate(payload)
        steps, step_s = params.steps, params.step_s
        checkpoint = ctx.load_checkpoint() or {}
        start = int(checkpoint.get("step", 0))
        started = time.monotonic()
        ctx.report(log=f"attempt {ctx.attempt} on node {ctx.node_id} in process {os.getpid()} from step {start}")
        for i in range(start, steps):
            if ctx.cancelled():
                return {"cancelled_at": i}
            if params.busy:
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
            every = params.emit_every
            if every and done % every == 0 and done < steps:
                ctx.emit({"type": "version", "step": done})
        if params.cache_key:
            key = params.cache_key
            ctx.cache.put_bytes(f"selftest/{key.replace(':', '_')}", b"cached by the self-test")
            ctx.cached(key)
        if params.fail:
            raise JobFailed("The self-test was asked to fail.")
        return {"steps": steps, "resumed_from": start, "node_id": ctx.node_id, "pid": os.getpid(),
                "niceness": os.nice(0)}
