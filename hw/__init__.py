"""The box's hardware as Linux sees it: board profiles, devices, the front-panel link.

Each device sits behind a small `typing.Protocol` with a simulated twin in
`hw.twins` (a fake sysfs tree, a pty with the real panel firmware on the other end, a
``/dev/watchdog`` stand-in). ``hw.panel_link`` is the link's frame codec, shared
unchanged with the MicroPython firmware.
"""
