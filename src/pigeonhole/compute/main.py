"""``pigeonhole dispatcher``: connect to Ray (or start a local runtime), then dispatch until stopped."""

from __future__ import annotations

import logging
import os
import signal
import threading

from pigeonhole.settings import Settings

log = logging.getLogger(__name__)


def run_dispatcher(settings: Settings, *, parent_pid: int | None = None) -> None:
    from pigeonhole.compute import runtime
    from pigeonhole.logs import redact_root_handlers

    redact_root_handlers()  # job payloads and errors may quote what users sent
    runtime.prepare_environment()
    from pigeonhole.compute.dispatcher import Dispatcher
    from pigeonhole.compute.serving import PredictionDeployment
    from pigeonhole.db.engine import create_db_engine, create_session_factory
    from pigeonhole.db.migrate import upgrade

    stop = threading.Event()
    dispatcher: Dispatcher | None = None
    predictions = PredictionDeployment(settings) if settings.predict_mode == "ray" else None

    def request_stop(*_: object) -> None:
        stop.set()
        if dispatcher is not None:
            dispatcher.stop()

    for stop_signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop_signal, request_stop)
    if parent_pid:  # started by `pigeonhole serve`: never outlive it, even if it was killed
        def watch_parent() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent_pid:
                    log.warning("the serving process is gone; stopping the dispatcher")
                    request_stop()
        threading.Thread(target=watch_parent, daemon=True, name="parent-watch").start()

    engine = create_db_engine(settings.resolved_database_url, pool_size=4)
    try:
        upgrade(engine)
        if stop.is_set():
            return
        runtime.connect(settings)
        for stop_signal in (signal.SIGINT, signal.SIGTERM):  # Ray may have installed its own handlers
            signal.signal(stop_signal, request_stop)
        dispatcher = Dispatcher(settings, create_session_factory(engine), namespace=runtime.NAMESPACE)
        if stop.is_set():
            return

        def on_ready() -> None:
            log.info("dispatcher ready")
            if predictions is not None:  # the lease holder deploys the Ray Serve prediction service
                predictions.start()

        dispatcher.run(on_ready=on_ready)
    finally:
        if predictions is not None:
            predictions.stop()
        runtime.disconnect()
        engine.dispose()
