"""Fault injection between a box and the centre: a TCP proxy whose link can be cut,
black-holed, slowed, stalled or made to flap while the test runs (issue 5).

See README.md beside this file, "Testing outages".
"""

from tests.faults.proxy import (
    Bandwidth,
    Blackhole,
    Cut,
    FaultProxy,
    Flap,
    Latency,
    Mode,
    Pass,
    ProxyControl,
    ProxyProcess,
    SharedLink,
    Stall,
    parse_modes,
)

__all__ = [
    "Bandwidth",
    "Blackhole",
    "Cut",
    "FaultProxy",
    "Flap",
    "Latency",
    "Mode",
    "Pass",
    "ProxyControl",
    "ProxyProcess",
    "SharedLink",
    "Stall",
    "parse_modes",
]
