"""The chat schema's indexes answer the hub's hot queries on both stores."""

from __future__ import annotations

from pathlib import Path

from appliance.chat.schema import CHAT_MIGRATIONS, CHAT_PG_MIGRATIONS
from appliance.store.database import connect
from appliance.store.postgres import PgStore, migrate_store
from appliance.store.schema import migrate

#: The rooms of an agency, as `Chat.hub_pull` asks for them.
ROOMS_OF_DOMAIN = (
    "SELECT DISTINCT room_id FROM members WHERE substr(address, instr(address, '@') + 1) = ?"
)


def test_sqlite_finds_an_agencys_rooms_by_the_domain_index(tmp_path: Path) -> None:
    conn = connect(tmp_path / "chat.sqlite")
    migrate(conn, CHAT_MIGRATIONS)
    conn.execute("INSERT INTO rooms (id, kind, owner, created_by, created_at)"
                 " VALUES ('r1', 'group', 'a@a.go.th', 'a@a.go.th', 0)")  # fmt: skip
    conn.executemany(
        "INSERT INTO members (room_id, address, added_at) VALUES ('r1', ?, 0)",
        [(f"user{n}@agency{n % 50}.go.th",) for n in range(500)],
    )
    explained = conn.execute(f"EXPLAIN QUERY PLAN {ROOMS_OF_DOMAIN}", ("agency7.go.th",))
    plan = " ".join(str(row[-1]) for row in explained)
    assert "members_by_domain" in plan, plan
    rooms = conn.execute(ROOMS_OF_DOMAIN, ("agency7.go.th",)).fetchall()
    assert rooms == [("r1",)]
    conn.close()


def test_postgresql_finds_an_agencys_rooms_by_the_domain_index(pg_url: str) -> None:
    store = PgStore(pg_url, "chat")
    assert migrate_store(store, CHAT_PG_MIGRATIONS) == len(CHAT_PG_MIGRATIONS)
    conn = store.connect(writer=True)
    try:
        raw = conn.raw
        with raw.transaction():
            raw.execute("INSERT INTO rooms (id, kind, owner, created_by, created_at)"
                        " VALUES ('r1', 'group', 'a@a.go.th', 'a@a.go.th', 0)")  # fmt: skip
            raw.execute(
                "INSERT INTO members (room_id, address, added_at)"
                " SELECT 'r1', 'user' || n || '@agency' || (n % 50) || '.go.th', 0"
                " FROM generate_series(1, 5000) AS n"
            )
            raw.execute("ANALYZE members")
            query = ROOMS_OF_DOMAIN.replace("?", "%s")
            plan = " ".join(r[0] for r in raw.execute(f"EXPLAIN {query}", ("agency7.go.th",)))
            assert "members_by_domain" in plan, plan
            rooms = raw.execute(query, ("agency7.go.th",)).fetchall()
            assert [tuple(r) for r in rooms] == [("r1",)]
    finally:
        conn.close()
