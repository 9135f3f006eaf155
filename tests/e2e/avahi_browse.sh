#!/bin/sh
# avahi-browse, the Debian mDNS browser, inside a test's network namespace.
#
# Usage (under `ip netns exec NS`, which gives a private mount namespace):
#   avahi_browse.sh AVAHI_CONF [avahi-browse arguments...]
# avahi-browse asks avahi-daemon over the D-Bus system bus, so this starts both for
# this namespace alone: tmpfs over /run/dbus and /run/avahi-daemon (the host's stay
# untouched), a system bus, avahi-daemon without dropping root or chroot, then
# avahi-browse in the foreground. All three share one process group; the test ends
# them by that group.
set -e
mkdir -p /run/dbus /run/avahi-daemon
mount -t tmpfs tmpfs /run/dbus
mount -t tmpfs tmpfs /run/avahi-daemon
dbus-daemon --system --nofork --nopidfile &
for _ in $(seq 100); do [ -S /run/dbus/system_bus_socket ] && break; sleep 0.1; done
avahi-daemon --no-drop-root --no-chroot --no-rlimits -f "$1" &
shift
for _ in $(seq 100); do avahi-browse -a -t -p -k >/dev/null 2>&1 && break; sleep 0.1; done
echo "browsing"
exec avahi-browse "$@"
