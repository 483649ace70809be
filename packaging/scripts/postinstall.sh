#!/bin/sh
# After an install or an upgrade, systemd learns of the unit. The agent is
# neither enabled nor started: set its flags in the environment file
# (/etc/sysconfig/icapwatch, /etc/default/icapwatch), then
# systemctl enable --now icapwatch. An upgrade restarts a running agent so
# that the new binary runs.
#   rpm: $1 is how many versions are installed now (1 install, 2 upgrade).
#   deb: $1 is "configure", $2 the version configured before (empty at first).
set -e
# Installed into another root (dpkg --root): that root's systemd is not this one.
[ -z "${DPKG_ROOT:-}" ] || exit 0
# No systemd running: a container, a chroot, an image build.
[ -d /run/systemd/system ] || exit 0
systemctl daemon-reload || :
upgrade=
case "$1" in
configure) if [ -n "${2:-}" ]; then upgrade=1; fi ;;
[0-9]*) if [ "$1" -ge 2 ]; then upgrade=1; fi ;;
esac
if [ -n "$upgrade" ]; then
	systemctl try-restart icapwatch.service || :
fi
