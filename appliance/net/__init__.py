"""The box's generic network layer: what every TCP listener shares, whatever it speaks.

- `listeners`: bind a service's port, start TLS with a deadline, admit connections
  under limits (`ConnectionGate`), and keep one session's fault inside that session.
- `http1`: read HTTP/1.1 requests off a server connection over h11 (deadlines, body
  limits, the framing rules h11 leaves to us) and write whole responses; the
  request → response loop with keep-alive (`HTTPServerConnection`).
- `tls_stream`: server-side TLS whose record layer OpenSSL runs on the socket itself.
- `jsonbody`: strict RFC 8259 JSON for request and response bodies.

The HTTPS server (`appliance.web.server`), the hub's sync listener
(`appliance.sync.hub.server`) and the SMTP and IMAP servers build on it. What this is
not: any protocol's rules (those are the sans-I/O cores), routes, or the box's TLS
settings (`appliance.security.tls` makes the contexts). Nothing here imports a
capability: the layer sits under every service (docs/architecture.md).
"""
