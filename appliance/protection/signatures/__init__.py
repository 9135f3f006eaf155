"""Signature updates during a cut: the hub mirrors ClamAV databases and rspamd rules,
boxes fetch them over the sync API (GIN) or read them off a USB stick (issue 23).

- ``manifest.py``: a signed set's format, its check and the atomic install.
- ``sync.py``: the hub's routes, the box's `SignatureUpdater` and the engines' reload.
- ``commands.py``: ``edgebox hub signatures publish`` and ``edgebox signatures``.

It sits above provisioning (its trust is the provisioning CA's) and the uplink (its
transport is the sync API), which is why it is a folder of its own (tests/test_layering.py).
"""
