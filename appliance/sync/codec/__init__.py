"""The sync protocol's messages: what a box and the hub send each other, checked.

This is the sync layer's protocol core, like `appliance.mail.smtp.protocol` for SMTP:
JSON values in, frozen values (or a refusal) out, and the reverse. It reads no
database, no clock and no network, imports neither trio nor sqlite, and imports nothing
of ours but the pure text rules of `appliance.security.untrusted`; the domains
(`appliance.chat`, `appliance.directory`) and the services that move the messages
(`appliance.sync.chat`, `appliance.sync.directory`, `appliance.sync.hub`) build on it.

- `chat`: a replicated chat event, the hub's answers to a push, a pulled page.
- `directory`: one user of the replicated directory and its wire form.
"""
