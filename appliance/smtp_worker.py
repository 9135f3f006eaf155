"""One MX worker process: serve the MX port's sessions, hand every message to the main process.

`SMTPWorkerPool` (appliance.mail.smtp.pool) starts it, never an operator::

    python -m appliance.smtp_worker --worker N --desk-fd FD --listen-fd FD [--listen-fd FD]

It inherits the MX port's listening sockets and one end of a unix socket to the main
process's `CommitDesk`; the main process's first frame (HELLO) carries the box's
settings, so a worker serves exactly what `edgebox run` was started with. It opens the
box read-only (`appliance.box.open_worker_box`) and runs the same `SMTPService` as the
one-process box, with delivery, the traffic log and the SMTP counters forwarded. When
the main process goes away (its end of the socket closes) the worker stops.

This is the composition of a worker, beside the registry's: it imports no more than a
worker needs (not the web, chat or uplink), which keeps each worker's memory small.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import socket
import sys
from collections.abc import Sequence

import trio

from appliance.box import WorkerBox, open_worker_box
from appliance.config import Config
from appliance.directory.signin import SignIn
from appliance.mail.smtp.budget import MessageBudget
from appliance.mail.smtp.handoff import DEFAULT_MAX_FRAME
from appliance.mail.smtp.policy import Port
from appliance.mail.smtp.pool import (
    FRAME_SLACK,
    Channel,
    ForwardedDelivery,
    ForwardedMetrics,
    ForwardedTrafficLog,
    MainGone,
    WorkerLink,
    config_from_values,
)
from appliance.mail.smtp.server import SMTPService
from appliance.protection.authentication import InboundAuthenticator
from appliance.store.database import limit_allocator_retention
from appliance.supervisor import collect_garbage

log = logging.getLogger("edgebox.smtp.worker")


def worker_config(config: Config) -> Config:
    """The settings one of ``smtp_workers`` workers serves with.

    The connection limit is the MX port's, shared out: each worker admits its share,
    so the port as a whole still holds about ``max_connections``. The per-source limit
    stays whole in each worker: the kernel does not spread one source's connections
    evenly, and a relay's 20 sessions landing mostly on one worker must not be refused.
    """
    share = math.ceil(config.max_connections / config.smtp_workers)
    return dataclasses.replace(config, max_connections=share)


def mx_worker_service(parts: WorkerBox, link: WorkerLink, budget: MessageBudget) -> SMTPService:
    """The MX listener of a worker: the one-process service, with the main process's writer."""
    traffic = ForwardedTrafficLog(link)
    return SMTPService(
        Port.MX, config=parts.config, hostname=parts.hostname, tls=parts.tls,
        directory=parts.directory, mailstore=parts.mailstore,
        delivery=ForwardedDelivery(link),
        # The MX offers no AUTH; the service is handed the check all the same.
        signin=SignIn(parts.directory, parts.guard, traffic),
        traffic=traffic, disk_guard=parts.disk_guard, metrics=ForwardedMetrics(link),
        protection=parts.protection, authenticate=InboundAuthenticator(parts.hostname),
        budget=budget,
    )  # fmt: skip


async def serve(number: int, desk_fd: int, listen_fds: Sequence[int]) -> None:
    """Serve until the main process closes the hand-off."""
    desk = trio.socket.from_stdlib_socket(socket.socket(fileno=desk_fd))
    channel = Channel(trio.SocketStream(desk), DEFAULT_MAX_FRAME)
    link = WorkerLink(channel)
    hello = await link.hello()
    config = worker_config(config_from_values(hello["config"]))
    channel.decoder.max_frame = config.max_message_size + FRAME_SLACK
    listeners = [
        trio.SocketListener(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        for fd in listen_fds
    ]
    async with open_worker_box(config) as parts:
        service = mx_worker_service(parts, link, MessageBudget())
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run)
                if parts.protection is not None:
                    # Scans reuse clamd sessions, as in the main process's EngineWatch.
                    await nursery.start(_keep_clamd_connections, parts)
                nursery.start_soon(service.serve_listeners, listeners)
                # Closed TLS sessions leave cycles only a full collection frees, here
                # as in the main process (appliance.supervisor).
                nursery.start_soon(collect_garbage)
                await link.ready()
                log.info("smtp worker %d serving", number)
        except* MainGone:
            log.info("smtp worker %d: the main process closed the hand-off; stopping", number)


async def _keep_clamd_connections(
    parts: WorkerBox, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    assert parts.protection is not None
    async with parts.protection.clamd.keep_connections():
        task_status.started()
        await trio.sleep_forever()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.smtp_worker")
    parser.add_argument("--worker", type=int, required=True)
    parser.add_argument("--desk-fd", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, action="append", required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    os.umask(0o077)
    # Before any worker thread exists, as in `edgebox run` (appliance.cli).
    limit_allocator_retention()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.worker}]: %(message)s",
        stream=sys.stderr,
    )
    trio.run(serve, args.worker, args.desk_fd, args.listen_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
