"""The hub role: enrolment, the mutual-TLS sync listener and the hub's sync routes.

- `ca`: the hub's sync CA and box certificates;
- `enrolment`: one-time tokens and enrolled boxes (``DATA/db/hub.sqlite``);
- `admission`: the hub's half of ``edgebox enroll``;
- `server`: `HubSyncService`, the listener;
- `routes`: `hub_sync_routes`, every stream's routes in one list;
- `directory`: the directory routes (push, pull).
"""
