"""Compare the memory dumps of each process (tests/e2e/memdump): what grew, and where.

    .venv/bin/python tests/e2e/memdump/compare.py DIR [--top 15]

For each process id in DIR: the live objects by type that grew most between its second
dump and its last (the first is taken before tracing starts), and, where tracemalloc
snapshots exist, the source lines whose allocations grew most between the first
snapshot and the last; and each dump's native memory (SQLite, glibc heap, RssAnon) as
a curve in MB.
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
        print(f"   objects {first.get('objects')} -> {last.get('objects')}")
        series = [json.loads(p.read_text()).get("native", {}) for p in counts]
        for key in sorted({k for dump in series for k in dump}):
            if key != "blocks":
                curve = " ".join(f"{dump.get(key, 0) / 2**20:.1f}" for dump in series)
                print(f"   {key:>16} MB: {curve}")
        grew = {
            name: last.get("by_type", {}).get(name, 0) - first.get("by_type", {}).get(name, 0)
            for name in set(first.get("by_type", {})) | set(last.get("by_type", {}))
        }
        for name, delta in sorted(grew.items(), key=lambda kv: -kv[1])[: args.top]:
            if delta > 0:
                print(f"   +{delta:7d} {name} ({last['by_type'][name]})")
        if len(traces) >= 2:
            old = tracemalloc.Snapshot.load(str(traces[0]))
            new = tracemalloc.Snapshot.load(str(traces[-1]))
            print("   allocations grown (tracemalloc, by line):")
            for stat in new.compare_to(old, "lineno")[: args.top]:
                print(f"   {stat}")


if __name__ == "__main__":
    main()
