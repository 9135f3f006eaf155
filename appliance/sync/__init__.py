"""The uplink: everything that moves data between this box and the centre.

DESIGN.md "Sync, in one paragraph". Nothing here is on the path of a user's request
(principle 2, local first): each part is a background service with a durable queue or
cursor, and each can be cut off for days and catch up afterwards.

- `clock`: the wall clock retry schedules and expiry read, injectable so a 7-day outage
  can be tested in seconds.
- `central`: where the central servers are and the box's credentials for them.
- `codec`: the sync protocol's messages (chat events, directory entries), pure: the
  services here and at the hub, and the chat and directory domains, build on it.

Enrolment (``edgebox enroll``), which installs the credentials `central` reads, is a
provisioning step: `appliance.provisioning.enrol`.
"""
