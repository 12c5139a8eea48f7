#!/usr/bin/env bash
# Remove the DermEdge service installed by install.sh.
#
#   sudo device/systemd/uninstall.sh [--purge]
#
# Stops and disables the service and removes /opt/dermedge (code, models, venv) and the unit.
# The config /etc/dermedge and the state /var/lib/dermedge are kept unless --purge is given,
# which also removes the 'dermedge' user.
#
# DESTDIR=DIR works on files staged under DIR and prints the system commands instead of running them.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=device/systemd/common.sh
source "$SRC/device/systemd/common.sh"

PURGE=false
case ${1:-} in
  "") ;;
  --purge) PURGE=true ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown option '$1' (see --help)" ;;
esac
require_root "$@"

if systemd_running && [[ -e $DESTDIR$UNIT_DIR/$UNIT ]]; then
  sys systemctl disable --now "$UNIT"
fi
rm -f "$DESTDIR$UNIT_DIR/$UNIT"
if systemd_running; then
  sys systemctl daemon-reload
fi
rm -rf "$DESTDIR$APP_DIR"
say "removed $APP_DIR and $UNIT_DIR/$UNIT"

if "$PURGE"; then
  rm -rf "$DESTDIR$CONF_DIR" "$DESTDIR$STATE_DIR"
  if getent passwd "$SERVICE_USER" >/dev/null; then
    sys userdel "$SERVICE_USER"
  fi
  say "purged $CONF_DIR, $STATE_DIR and the user $SERVICE_USER"
else
  say "kept $CONF_DIR and $STATE_DIR (remove them with --purge)"
fi
