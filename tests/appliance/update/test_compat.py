"""Release N still serves the data release N+1 left (docs/updates.md): an update that
migrated the databases and was then rolled back must not leave the old release unable
to start. "N+1" here is this release's migrations plus one additive step of the kind the
rule allows, applied the way the next release would apply it."""

from __future__ import annotations

import time
from pathlib import Path

from appliance.box import configured
from appliance.directory.schema import DIRECTORY_MIGRATIONS
from appliance.mail.mailstore import MAIL_MIGRATIONS
from appliance.store.database import connect
from appliance.store.schema import Migration, migrate, schema_version
from appliance.update.confirm import read_gate
from appliance.update.gate import judge
from tests.harness import edgebox, init_box


def next_release(migrations: tuple[Migration, ...], table: str) -> tuple[Migration, ...]:
    step = Migration(
        len(migrations) + 1, "N+1: a label per row and a new table",
        f"ALTER TABLE {table} ADD COLUMN n1_label TEXT;\nCREATE TABLE n1_things (x TEXT);",
        older_releases_may_open=True,
    )  # fmt: skip
    return (*migrations, step)


async def test_release_n_serves_the_data_release_n_plus_1_migrated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    init_box(data, "compat.go.th", {"first@compat.go.th": "first-pass-2026"})
    for name, migrations, table in (
        ("mail.sqlite", MAIL_MIGRATIONS, "messages"),
        ("directory.sqlite", DIRECTORY_MIGRATIONS, "users"),
    ):
        conn = connect(data / "db" / name)
        migrate(conn, next_release(migrations, table))
        conn.close()

    # Release N (this code) writes and reads through its own command line...
    edgebox("user", "add", "--data", str(data), "second@compat.go.th", "--name", "second",
            "--password-stdin", input="second-pass-2026\n")  # fmt: skip
    listed = edgebox("user", "list", "--data", str(data)).stdout
    assert "first@compat.go.th" in listed
    assert "second@compat.go.th" in listed

    # ...and its update gate accepts the newer schema it could open.
    reading = await read_gate(configured(data, {}, {}), time.time())
    assert reading.schemas["mail"] == (len(MAIL_MIGRATIONS) + 1, len(MAIL_MIGRATIONS))
    assert reading.store_error == ""
    failing = {f.check for f in judge(reading) if f.level.name == "ERROR"}
    assert failing == {"services"}  # only because no box runs in this test
    conn = connect(data / "db" / "mail.sqlite")
    assert schema_version(conn) == len(MAIL_MIGRATIONS) + 1  # never lowered
    conn.close()
