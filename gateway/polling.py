"""The one wait loop behind every long answer: a generation's events, a model change's progress, the monitor's
event feed. Each waits on a queue for a client that may hang up at any time, and each must prove the client
is still there when nothing happens for a while.

`poll` yields what the queue delivers, `KEEPALIVE` after `keepalive` seconds of silence, and `TICK` every
`probe` seconds (after checking the client), so a caller can do periodic work. It returns when the client is
gone, so `for ... else:` tells a hang-up from a caller's own `break`.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Callable, Iterator

PROBE_SECONDS = 0.5  # how often a waiting request checks that its client is still connected

ClientGone = Callable[[], bool]


class KeepAlive:
    """Yielded when nothing happened for a while, so the stream can prove the client is there."""


class Tick:
    """Yielded every probe interval: time for a caller's periodic work."""


KEEPALIVE = KeepAlive()
TICK = Tick()


def poll(get: Callable[[float], Any], client_gone: ClientGone | None, keepalive: float | None,
         probe: float = PROBE_SECONDS) -> Iterator[Any]:
    """Items from `get(timeout)` (which may raise `queue.Empty` or return None when nothing came), checking
    `client_gone()` every `probe` seconds even while items flow: a request that writes nothing until its end
    must still notice a hang-up."""
    quiet_since = time.monotonic()
    next_probe = quiet_since + probe
    while True:
        try:
            item = get(max(0.0, next_probe - time.monotonic()))
        except queue.Empty:
            item = None
        now = time.monotonic()
        if item is not None:
            quiet_since = now
            yield item
        elif keepalive is not None and now - quiet_since >= keepalive:
            quiet_since = now
            yield KEEPALIVE
        if now >= next_probe:
            next_probe = now + probe
            if client_gone is not None and client_gone():
                return
            yield TICK
