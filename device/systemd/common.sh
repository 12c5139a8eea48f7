# Shared by install.sh and uninstall.sh (sourced, not run).
#
# With DESTDIR set, files are staged under DESTDIR and every command that would change the
# system itself (apt-get, useradd, pip, chown, systemctl) is printed instead of run. The tests
# use that to check the install logic without touching the machine.

APP_DIR=/opt/dermedge
CONF_DIR=/etc/dermedge
STATE_DIR=/var/lib/dermedge
UNIT_DIR=/etc/systemd/system
UNIT=dermedge.service
SERVICE_USER=dermedge
DESTDIR=${DESTDIR:-}

say() { printf 'dermedge: %s\n' "$*"; }
warn() { printf 'dermedge: warning: %s\n' "$*" >&2; }
die() { printf 'dermedge: error: %s\n' "$*" >&2; exit 1; }

# Run a command that changes the system, or only print it when staging under DESTDIR.
sys() {
  if [[ -n $DESTDIR ]]; then
    printf 'would run:'
    printf ' %q' "$@"
    printf '\n'
  else
    "$@"
  fi
}

require_root() {
  [[ -n $DESTDIR || $(id -u) -eq 0 ]] || die "run as root: sudo $0 $*"
}

# systemctl only works when systemd is PID 1 (not in a chroot or a container without it).
systemd_running() {
  [[ -n $DESTDIR || -d /run/systemd/system ]]
}
