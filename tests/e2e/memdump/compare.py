"""Compare the memory dumps of each process (tests/e2e/memdump): what grew, and where.

    .venv/bin/python tests/e2e/memdump/compare.py DIR [--top 15]

For each process id in DIR: the live objects by type that grew most between its second
dump and its last (the first is taken before tracing starts), and, where tracemalloc
snapshots exist, the source lines whose allocations grew most between the first
snapshot and the last.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    pids = sorted({p.name.split("-")[0] for p in args.folder.glob("*.json")})
    for pid in pids:
        counts = sorted(args.folder.glob(f"{pid}-*.json"))
        traces = sorted(args.folder.glob(f"{pid}-*.trace"))
        if len(counts) < 3:
            continue
        first, last = (json.loads(p.read_text()) for p in (counts[1], counts[-1]))
        minutes = (last["time"] - first["time"]) / 60
        print(f"== pid {pid}: {len(counts)} dumps, {minutes:.1f} min between those compared")
        print(f"   objects {first['objects']} -> {last['objects']}")
        grew = {
            name: last["by_type"].get(name, 0) - first["by_type"].get(name, 0)
            for name in set(first["by_type"]) | set(last["by_type"])
        }
        for name, delta in sorted(grew.items(), key=lambda kv: -kv[1])[: args.top]:
            if delta > 0:
                print(f"   +{delta:7d} {name} ({last['by_type'].get(name, 0)})")
        if len(traces) >= 2:
            old = tracemalloc.Snapshot.load(str(traces[0]))
            new = tracemalloc.Snapshot.load(str(traces[-1]))
            print("   allocations grown (tracemalloc, by line):")
            for stat in new.compare_to(old, "lineno")[: args.top]:
                print(f"   {stat}")


if __name__ == "__main__":
    main()
