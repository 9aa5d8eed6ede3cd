"""The dispatcher's share of ``ray`` prediction mode: deploy the Ray Serve application, remove it on exit.

Deployed by the dispatcher that holds the lease (so one deployment per cluster, however many
dispatchers wait), in a background thread: Serve takes seconds to start its proxy and first replica,
and jobs must not wait for that. Until it runs, predictions answer 503 "starting or busy".
"""

from __future__ import annotations

import logging
import threading

from pigeonhole.settings import Settings

log = logging.getLogger(__name__)
STOP_WAIT_S = 5.0


class PredictionDeployment:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ready = threading.Event()
        self.failed: str | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._deploy, daemon=True, name="serve-deploy")
            self._thread.start()

    def _deploy(self) -> None:
        from pigeonhole.serving import ray_app

        try:
            ray_app.deploy(self.settings)
        except Exception as exc:  # logged with the reason; the API keeps answering 503 for predictions
            self.failed = f"{type(exc).__name__}: {exc}"
            if self._stopping.is_set():  # shut down while it was still starting: nothing went wrong
                log.debug("prediction service deployment interrupted by shutdown: %s", self.failed)
            else:
                log.exception("could not start the prediction service on Ray Serve (port %s)",
                              self.settings.serve_port)
            return
        self.ready.set()

    def stop(self) -> None:
        """Shut Serve down on a Ray runtime this process started; on a shared cluster (``PIGEONHOLE_RAY_ADDRESS``)
        leave it running for the API replicas, and the next dispatcher to take the lease redeploys it."""
        if self._thread is None:
            return
        self._stopping.set()
        if not self.settings.ray_address:
            from pigeonhole.serving import ray_app

            try:
                ray_app.shutdown()
            except Exception:  # the runtime is going away with this process anyway
                log.warning("Ray Serve did not shut down cleanly", exc_info=True)
        # A deployment still starting is waiting on Serve's controller: let it notice before Ray disconnects,
        # or its next call would quietly connect to Ray again from that thread.
        self._thread.join(timeout=STOP_WAIT_S)
