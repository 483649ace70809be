#!/bin/sh
# Before the package goes away (not before an upgrade): stop and disable
# the agent, which detaches its eBPF hooks.
#   rpm: $1 is how many versions remain (0 on removal).
#   deb: $1 is "remove" on removal, "upgrade" before an upgrade.
set -e
[ -z "${DPKG_ROOT:-}" ] || exit 0
[ -d /run/systemd/system ] || exit 0
case "$1" in
0 | remove) systemctl --no-reload disable --now icapwatch.service || : ;;
esac
