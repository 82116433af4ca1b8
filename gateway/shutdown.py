"""Graceful shutdown: on SIGTERM, requests in flight get `shutdown_grace` seconds to finish; what still runs
then ends with its family's error (a stream's last frame is that error, never a cut connection), the runners are
stopped, and the process exits 0.

gunicorn's worker already stops accepting on SIGTERM and waits for open connections up to its
`graceful_timeout`, which `serve` sets a little beyond the grace period. What gunicorn cannot do is end a stream
with a final frame: it can only drop the connection. So the worker's SIGTERM handler is wrapped to also start a
timer that, when the grace period is over, ends every running generation through the service.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from gateway.types import ErrorKind, GatewayError

log = logging.getLogger("gateway.shutdown")

MARGIN = 5.0  # seconds gunicorn waits beyond the grace period, for the final frames to go out


def install(worker: Any, grace: float) -> None:
    """gunicorn's `post_worker_init` hook: `worker.wsgi` is the app `create_app` built."""
    gateway = worker.wsgi.extensions["gateway"]
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        log.info("shutting down: requests in flight have %.0f s to finish", grace)
        timer = threading.Timer(grace, end_generations, args=(gateway.service,))
        timer.daemon = True
        timer.start()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def end_generations(service: Any) -> None:
    ended = service.shutdown(GatewayError(ErrorKind.UNAVAILABLE, "The server is shutting down."))
    if ended:
        log.warning("shutdown grace period over: ended %d running generations", ended)


def stop_runners(worker: Any) -> None:
    """gunicorn's `worker_exit` hook: every runner process stops before the worker exits."""
    worker.wsgi.extensions["gateway"].pool.close()
