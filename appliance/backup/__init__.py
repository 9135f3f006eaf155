"""Backups: encrypted, incremental snapshots of the data directory, and their restore.

- `crypto`: the backup key (sealed on the box, printed as recovery words) and the
  chunked AES-256-GCM format of every file in a backup;
- `snapshot`: `edgebox backup create` (consistent while the box serves);
- `restore`: `edgebox backup restore` onto a blank data directory, all or nothing;
- `service`: the daily backup run by `edgebox run` when ``backup_target`` is set;
- `health`: "last good backup older than two days".

Operator's page: docs/backup.md.
"""
