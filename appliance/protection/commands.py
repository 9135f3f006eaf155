"""`edgebox agency thresholds`: one agency's spam scores (docs/protection.md).

Kept in the ``protection`` section of ``DATA/config.json`` as domain → ``{"junk_score",
"reject_score"}``; a running box reads them for every message, so a change applies to
the next message without a restart.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from appliance.directory import normalise_domain
from appliance.protection.verdict import Thresholds
from appliance.store.settings import Settings

SECTION = "protection"


def add_threshold_command(agency_commands: Any) -> None:
    """Add ``thresholds`` under ``edgebox agency``."""
    parser = agency_commands.add_parser(
        "thresholds", help="show or set an agency's spam scores (Junk and refuse)",
        description="show or set an agency's spam scores; without scores, show them",
    )  # fmt: skip
    parser.set_defaults(handler=_thresholds)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("EDGEBOX_DATA", "var")))
    parser.add_argument("domain", help="the agency's mail domain")
    parser.add_argument("--junk-score", type=float, help="from this score: into Junk")
    parser.add_argument("--reject-score", type=float, help="from this score: refused (550)")
    parser.add_argument("--default", action="store_true", help="go back to the box's scores")


def _thresholds(args: argparse.Namespace) -> int:
    domain = normalise_domain(args.domain)
    settings = Settings(args.data / "config.json")
    try:
        section = settings.get(SECTION)
        found = section.get(domain)
        current: dict[str, Any] = found if isinstance(found, dict) else {}
        if args.default:
            settings.update(SECTION, {domain: {}})  # update merges: empty means default
            print(f"{domain}: the box's default scores")
            return 0
        if args.junk_score is None and args.reject_score is None:
            print(f"{domain}: {current or 'the box default scores'}")
            return 0
        values = {**current}
        if args.junk_score is not None:
            values["junk_score"] = args.junk_score
        if args.reject_score is not None:
            values["reject_score"] = args.reject_score
        try:
            Thresholds(**{k: float(v) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            print(f"edgebox: {exc}")
            return 2
        settings.update(SECTION, {domain: values})
    finally:
        settings.close()
    print(f"{domain}: {values}")
    return 0
