"""Offsite backups: each box's backups kept at the hub, over the mutual-TLS sync API.

- `protocol`: the routes' paths and the wire shapes both sides share;
- `routes`: the hub's side (`backup_hub_routes`): per-box sets, resumable uploads,
  retention, the escrowed keys;
- `upload`: the box's side: `create_offsite_backup` and the daily `OffsiteBackup`
  service, incremental, rate-limited and stepping aside for mail and chat;
- `download`: fetching a set back from the hub for a restore.

A package of its own above both `appliance.backup` and `appliance.sync` (it joins
them); docs/backup.md is the operator's page.
"""
