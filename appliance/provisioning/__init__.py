"""Provisioning: the box's states, its setup path and factory reset.

A box leaves the factory (or a reset) *unprovisioned*: it has its own identity (box id,
device certificate, setup code; `device`) and nothing else. Provisioning (`provision`)
gives it an agency and a first admin, durably and atomically; factory reset (`reset`)
crypto-erases everything but the identity. `lifecycle` is the state object the running
box, the setup API, discovery and the front panel share. docs/provisioning.md is the
API's documentation for the parts built on it (web wizard, USB stick, panel).
"""
