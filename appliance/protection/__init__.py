"""Mail protection: anti-virus and anti-spam scanning of everything that enters the box,
and DKIM signing and verification (issue 23).

One folder, split the house's way. Scanning:

- ``clamd.py``, ``rspamd.py``: the engines' wire protocols, sans-I/O.
- ``verdict.py``: from the engines' answers and an agency's thresholds to a decision
  (clean, Junk, spam, virus, unavailable) and the headers an accepted message carries.
- ``scanner.py``: the thin trio clients and `Protection`, what the entry points call.
- ``engines.py``: configuring, running and watching clamd and rspamd (`EngineWatch`).
- ``health.py``: the engines' state as health findings.

The entry points (SMTP MX and submission, webmail compose, mailbox replication, chat
uploads) each ask `Protection` before they accept; docs/protection.md says what a
sender sees. DKIM: the ``dkim*`` modules.
"""

from appliance.protection.scanner import Protection, ScannerUnavailable
from appliance.protection.verdict import Outcome, Thresholds, Verdict

__all__ = ["Outcome", "Protection", "ScannerUnavailable", "Thresholds", "Verdict"]
