"""Configurations for in-process tests of the box's services."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from appliance.config import DEV_PORTS, Config, load_config


def https_on_a_free_port(data: Path) -> Config:
    """Return the box's configuration with the HTTPS service on a port the kernel picks.

    The offset cancels the dev port, so the service binds port 0 and `serve` reports the
    port it got. It is set on the built Config because load_config refuses an offset that
    puts ports outside 1-65535 (the other services' ports would be negative; these tests
    start only the HTTPS service).
    """
    return dataclasses.replace(load_config(data), port_offset=-DEV_PORTS["https"])
