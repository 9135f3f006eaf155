"""Start every service in one trio nursery, restart the one that crashes, tell systemd.

A service is anything with a ``name`` and an ``async serve(task_status=...)`` that binds
its sockets, reports the addresses it listens on through ``task_status.started`` and
then serves until cancelled. The supervisor:

- starts them in order and fails fast if one cannot start (a port in use is an error
  the operator must see, not something to retry quietly);
- restarts a service that crashes *after* it started, with exponential back-off, so one
  bad connection handler cannot take the box's mail down for good;
- tells systemd ``READY=1`` once everything listens and feeds its watchdog
  (sd_notify(3)), when systemd started us with ``NOTIFY_SOCKET``;
- writes ``DATA/run/status.json`` (pid, listeners, and each service's state and
  restarts, rewritten when one crashes or comes back) for `edgebox status`, and removes
  it on a clean stop; `service_states` gives the same to the health monitor in-process.
- freezes what start-up left alive out of the garbage collector's reach, then runs a full
  collection every `COLLECT_EVERY` seconds (see `collect_garbage`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import trio

from appliance.health.snapshot import ServiceState
from appliance.store.database import release_free_heap
from appliance.store.files import write_atomically

log = logging.getLogger("edgebox.supervisor")

#: Longest pause between restarts of a crashing service.
MAX_BACKOFF = 60.0
#: Seconds between two full garbage collections.
COLLECT_EVERY = 60.0


class Service(Protocol):
    name: str

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = ...) -> None: ...


class Supervisor:
    def __init__(self, services: Sequence[Service], status_file: Path) -> None:
        self.services = list(services)
        self.status_file = status_file
        self.listeners: dict[str, list[str]] = {}
        self.restarts: dict[str, int] = {}
        self.running: dict[str, bool] = {}
        self.last_error: dict[str, str] = {}
        self._ready = False
        self.started_at = int(time.time())

    def service_states(self) -> dict[str, ServiceState]:
        """Each started service: running or not, restarts, addresses, last crash."""
        return {
            name: ServiceState(
                running=self.running.get(name, False),
                restarts=self.restarts.get(name, 0),
                addresses=tuple(addresses),
                last_error=self.last_error.get(name, ""),
            )
            for name, addresses in self.listeners.items()
        }

    async def run(self, on_ready: Callable[[dict[str, list[str]]], None] | None = None) -> None:
        """Run until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                for service in self.services:
                    self.listeners[service.name] = await nursery.start(self._keep_running, service)
                self._ready = True
                self._write_status()
                if on_ready is not None:
                    on_ready(self.listeners)
                notify("READY=1")
                nursery.start_soon(_feed_watchdog)
                nursery.start_soon(collect_garbage)
        finally:
            self.status_file.unlink(missing_ok=True)

    async def _keep_running(
        self, service: Service, *, task_status: trio.TaskStatus[list[str]]
    ) -> None:
        # The first start is not retried: its failure goes to `run`'s caller.
        started = False
        backoff = 1.0
        while True:
            began = trio.current_time()
            try:
                async with trio.open_nursery() as nursery:
                    addresses = await nursery.start(service.serve)
                    self._set_running(service.name, True)
                    if not started:
                        task_status.started(addresses)
                        started = True
                log.error("service %s stopped by itself; restarting", service.name)
                self._set_running(service.name, False, "stopped by itself")
            except Exception as exc:
                if not started:
                    raise
                log.exception("service %s crashed; restarting in %.0fs", service.name, backoff)
                self._set_running(service.name, False, _describe(exc))
            self.restarts[service.name] = self.restarts.get(service.name, 0) + 1
            if trio.current_time() - began > MAX_BACKOFF:
                backoff = 1.0  # it ran well for a while: this is a new fault
            await trio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _set_running(self, name: str, running: bool, error: str = "") -> None:
        if self.running.get(name) == running:
            return
        self.running[name] = running
        if error:
            self.last_error[name] = error
        if self._ready:
            # Crashes are rare: rewriting the small file each time costs nothing.
            self._write_status()

    def _write_status(self) -> None:
        states = {
            name: {"running": s.running, "restarts": s.restarts, "last_error": s.last_error}
            for name, s in self.service_states().items()
        }
        status = {
            "pid": os.getpid(),
            "started_at": self.started_at,
            "services": self.listeners,
            "states": states,
        }
        write_atomically(self.status_file, json.dumps(status, indent=1).encode(), mode=0o644)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the error inside the service's nursery, for the operator."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:200]


def notify(message: str) -> None:
    """Send *message* to systemd if it asked for notifications (sd_notify(3))."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)


async def collect_garbage(every: float = COLLECT_EVERY) -> None:
    """Freeze what start-up left alive, then run a full collection every *every* seconds.

    Every TLS connection leaves a reference cycle behind when it closes (trio's
    SSLStream holds a bound method of itself), and with it the OpenSSL state and
    buffers of the connection. Python's generational collector frees such cycles only
    in a full collection, which comes after ever more allocations as the process's
    long-lived objects grow; on a flapping uplink, where every cut costs a few
    connections each way, the garbage and the process's resident memory grew for
    minutes between two. A full collection a minute bounds it to a minute's worth of
    connections (the soak of issue 24).

    A full collection walks every tracked object with the event loop stopped: after
    start-up some 75,000 of them (modules, settings, caches), 90-100 ms of a core on
    the development machine, every minute, in the tail of every chat stream and mail
    session of that moment. They live as long as the process, so once the box is up
    they are collected once and frozen (``gc.freeze``, Python 3.7+): later collections
    walk only what came after. No client is served yet at that point, so no
    connection's garbage is frozen with them.
    """
    gc.collect()
    gc.freeze()
    while True:
        await trio.sleep(every)
        found = gc.collect()
        # What the collection freed is free in glibc's heaps, not yet given back.
        released = release_free_heap()
        log.debug("garbage collection: %d unreachable objects freed, heap trimmed: %s",
                  found, released)  # fmt: skip


async def _feed_watchdog() -> None:
    # systemd sets WATCHDOG_USEC when the unit has WatchdogSec=; pet it at half that.
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if usec <= 0:
        return
    while True:
        notify("WATCHDOG=1")
        await trio.sleep(usec / 2_000_000)
