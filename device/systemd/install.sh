#!/usr/bin/env bash
# Install the DermEdge daemon as a systemd service on a Raspberry Pi
# (Raspberry Pi OS Bookworm, Python 3.11, or later). Idempotent: run it again to update.
#
#   sudo device/systemd/install.sh [--models DIR] [--mqtt-clients] [--no-start] [--no-web] [--tls [--tls-port N]]
#
#   --models DIR     model folders to install (default: the repository's models/)
#   --mqtt-clients   also install mosquitto-clients (mosquitto_sub, for watching results)
#   --no-start       install and enable nothing in systemd, only the files (chroots, images)
#   --no-web         install no browser app (the page's /app/ then answers 404 saying how to add it)
#   --tls            also put nginx in front: HTTPS on port 443 (--tls-port) with a self-signed
#                    certificate made here (its SHA-256 fingerprint is printed), per-client
#                    connection and request limits; the daemon stays on 127.0.0.1:5000
#
# What it does: apt packages (python3-opencv, python3-picamera2 where the sources have it), a
# system user 'dermedge' in the video and render groups, the code and models under
# /opt/dermedge, a venv there with --system-site-packages (apt's numpy, OpenCV and picamera2)
# and requirements/pi.txt, the config /etc/dermedge/device.yaml (only if it does not exist:
# a reinstall never overwrites it; the new example goes beside it as device.yaml.example),
# and the service dermedge.service, enabled and (re)started. The browser app (web/, served at /app/)
# is installed built: web/dist as `make web` left it (on the workstation, copied here, or on this
# machine), else it is built here in a scratch folder with Node.js and npm (from apt when missing),
# against the default model. It is static files, the same on every architecture. With --tls: nginx from apt, the
# certificate in /etc/dermedge/tls (kept on reinstall) and the site nginx-dermedge.conf.
#
# DESTDIR=DIR stages the files under DIR and prints the system commands instead of running them.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=device/systemd/common.sh
source "$SRC/device/systemd/common.sh"

PYTHON=${PYTHON:-python3}
# Where ai-edge-litert has no wheel (32-bit Raspberry Pi OS): tflite-runtime, which needs
# Python <= 3.11 and numpy 1.x.
TFLITE_FALLBACK="tflite-runtime==2.14.0"

MODELS_SRC=$SRC/models
MQTT_CLIENTS=false
START=true
WEB=true
TLS=false
TLS_PORT=443
# The daemon's own port (http.port in device.yaml; keep http.host 127.0.0.1 behind the proxy).
HTTP_PORT=5000
TLS_DIR=$CONF_DIR/tls
NGINX_SITE=/etc/nginx/sites-available/dermedge.conf

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    case $1 in
      --models) MODELS_SRC=${2:?--models needs a folder}; shift 2 ;;
      --mqtt-clients) MQTT_CLIENTS=true; shift ;;
      --no-start) START=false; shift ;;
      --no-web) WEB=false; shift ;;
      --tls) TLS=true; shift ;;
      --tls-port) TLS_PORT=${2:?--tls-port needs a port}; shift 2 ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option '$1' (see --help)" ;;
    esac
  done
  [[ -d $MODELS_SRC || $MODELS_SRC == "$SRC/models" ]] || die "--models: no such folder: $MODELS_SRC"
}

check_python() {
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is older than 3.11; DermEdge needs Raspberry Pi OS Bookworm or later"
}

install_apt_packages() {
  local pkgs=(python3 python3-venv python3-pip python3-numpy python3-opencv python3-cryptography)
  "$MQTT_CLIENTS" && pkgs+=(mosquitto-clients)
  "$TLS" && pkgs+=(nginx openssl)
  if [[ -n $DESTDIR ]] || apt-cache show python3-picamera2 >/dev/null 2>&1; then
    pkgs+=(python3-picamera2)
  else
    warn "python3-picamera2 is not in the apt sources (not Raspberry Pi OS?): camera.source" \
      "picamera2 will not work here; opencv and folder will"
  fi
  say "apt packages: ${pkgs[*]}"
  sys apt-get update -qq
  sys env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
}

create_user() {
  if ! getent passwd "$SERVICE_USER" >/dev/null; then
    sys useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
      --shell /usr/sbin/nologin "$SERVICE_USER"
  fi
  local group
  for group in video render; do
    if getent group "$group" >/dev/null; then
      sys usermod -a -G "$group" "$SERVICE_USER"
    fi
  done
}

# Replace a folder as a whole, so files removed upstream do not linger.
replace_dir() {
  local from=$1 to=$2
  rm -rf "$to.new"
  cp -R "$from" "$to.new"
  find "$to.new" -name __pycache__ -type d -prune -exec rm -rf {} +
  rm -rf "$to"
  mv "$to.new" "$to"
}

install_code_and_models() {
  local app=$DESTDIR$APP_DIR
  mkdir -p "$app/requirements" "$app/models"
  replace_dir "$SRC/device" "$app/device"
  cp "$SRC/requirements/pi.txt" "$app/requirements/pi.txt"
  local found=0 card
  for card in "$MODELS_SRC"/*/card.json; do
    [[ -f $card ]] || continue
    replace_dir "$(dirname "$card")" "$app/models/$(basename "$(dirname "$card")")"
    say "model installed: $APP_DIR/models/$(basename "$(dirname "$card")")"
    found=$((found + 1))
  done
  # models/DEFAULT names the default model: the daemon's model.dir default reads it
  if [[ -f $MODELS_SRC/DEFAULT ]]; then install -m 0644 "$MODELS_SRC/DEFAULT" "$app/models/DEFAULT"; fi
  [[ $found -gt 0 ]] || warn "no model folder (with card.json) in $MODELS_SRC: copy one to" \
    "$APP_DIR/models/ and point model.dir in $CONF_DIR/device.yaml at it"
  chmod -R u=rwX,go=rX "$app/device" "$app/models" "$app/requirements"
}

# The browser app, built: web/dist when `make web` made it, else a build here (npm ci needs the
# network, as pip does). The build never writes into the source tree, which may belong to a user.
install_web_app() {
  local dist=$SRC/web/dist scratch default
  if [[ ! -f $dist/index.html && ! -f $MODELS_SRC/DEFAULT ]]; then
    warn "no browser app: web/dist is not built and $MODELS_SRC has no DEFAULT to build it for ('make web', then run this again)"
    return
  fi
  if [[ ! -f $dist/index.html ]]; then
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
      say "apt packages: nodejs npm (to build the browser app once; --no-web skips it)"
      sys env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm
    fi
    default=$MODELS_SRC/$(<"$MODELS_SRC/DEFAULT")
    scratch=$(mktemp -d)
    mkdir -p "$scratch/web" "$scratch/models"
    cp "$SRC/web/package.json" "$SRC/web/package-lock.json" "$SRC/web/build.mjs" "$scratch/web/"
    cp -R "$SRC/web/src" "$scratch/web/src"
    cp "$MODELS_SRC/DEFAULT" "$scratch/models/DEFAULT"
    say "building the browser app for $(basename "$default") (npm ci, node build.mjs)"
    (cd "$scratch/web" && npm ci --no-audit --no-fund --loglevel=error && node build.mjs --model "$default" --out dist) ||
      die "the browser app did not build; build it with 'make web' on a machine with Node.js >= 18, copy web/dist here and run this again (or pass --no-web)"
    dist=$scratch/web/dist
  fi
  mkdir -p "$DESTDIR$APP_DIR/web"
  replace_dir "$dist" "$DESTDIR$APP_DIR/web/dist"
  chmod -R u=rwX,go=rX "$DESTDIR$APP_DIR/web"
  [[ -z ${scratch:-} ]] || rm -rf "$scratch"
  say "browser app installed: $APP_DIR/web/dist (the page links it at /app/)"
}

install_venv() {
  local venv=$APP_DIR/venv
  if [[ ! -x $DESTDIR$venv/bin/python ]]; then
    sys "$PYTHON" -m venv --system-site-packages "$venv"
  fi
  if ! sys "$venv/bin/pip" install -q -r "$APP_DIR/requirements/pi.txt"; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info >= (3, 12))' ||
      die "pip could not install requirements/pi.txt and $TFLITE_FALLBACK needs Python <= 3.11"
    warn "pip could not install requirements/pi.txt (no ai-edge-litert wheel for this platform?);" \
      "trying $TFLITE_FALLBACK instead of ai-edge-litert"
    local reqs
    reqs=$(mktemp)
    grep -v '^ai-edge-litert' "$DESTDIR$APP_DIR/requirements/pi.txt" >"$reqs"
    echo "$TFLITE_FALLBACK" >>"$reqs"
    sys "$venv/bin/pip" install -q -r "$reqs"
    rm -f "$reqs"
  fi
  # The service runs with a read-only /opt and PYTHONDONTWRITEBYTECODE: compile once here.
  sys "$venv/bin/python" -m compileall -q "$APP_DIR/device"
  sys env -C "$APP_DIR" "$venv/bin/python" -c 'from device.engine import interpreter_class as c
print("dermedge: TFLite interpreter:", c()[0])'
}

install_config() {
  local conf_dir=$DESTDIR$CONF_DIR example=$SRC/device/config.example.yaml
  mkdir -p "$conf_dir"
  if [[ -e $conf_dir/device.yaml ]]; then
    install -m 0644 "$example" "$conf_dir/device.yaml.example"
    say "kept the existing config $CONF_DIR/device.yaml (the current example is device.yaml.example)"
  else
    install -m 0640 "$example" "$conf_dir/device.yaml"
    sys chown "root:$SERVICE_USER" "$CONF_DIR/device.yaml"
    say "wrote the config $CONF_DIR/device.yaml from the example: edit camera, mqtt and http there"
  fi
  # A config that does not check out only warns: the owner may not have copied a model yet.
  sys env -C "$APP_DIR" "$APP_DIR/venv/bin/python" -m device check-config "$CONF_DIR/device.yaml" ||
    warn "fix $CONF_DIR/device.yaml, then: sudo systemctl restart $UNIT"
}

install_unit() {
  mkdir -p "$DESTDIR$UNIT_DIR"
  install -m 0644 "$SRC/device/systemd/$UNIT" "$DESTDIR$UNIT_DIR/$UNIT"
  if ! "$START"; then
    say "service installed, not started (--no-start): sudo systemctl enable --now $UNIT"
  elif ! systemd_running; then
    say "systemd is not running here; start it on the Pi with: sudo systemctl enable --now $UNIT"
  else
    sys systemctl daemon-reload
    sys systemctl enable "$UNIT"
    # A restart, not a reload: the code itself may have changed.
    sys systemctl restart "$UNIT"
    say "service enabled and started: systemctl status dermedge; journalctl -u dermedge -f"
  fi
}

# A self-signed certificate, made once (a reinstall keeps it, so pinned clients keep working).
make_certificate() {
  local dir=$DESTDIR$TLS_DIR host
  host=$(hostname -s 2>/dev/null || echo dermedge)
  mkdir -p "$dir"
  chmod 0700 "$dir"
  if [[ ! -f $dir/dermedge.crt || ! -f $dir/dermedge.key ]]; then
    (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
      -subj "/CN=$host" -addext "subjectAltName=DNS:$host,DNS:$host.local,DNS:localhost,IP:127.0.0.1" \
      -keyout "$dir/dermedge.key" -out "$dir/dermedge.crt" 2>/dev/null) ||
      die "openssl could not make the certificate in $TLS_DIR"
    chmod 0644 "$dir/dermedge.crt"
    say "made a self-signed certificate for $host in $TLS_DIR (valid 10 years)"
  else
    say "kept the certificate in $TLS_DIR"
  fi
  say "TLS certificate $(openssl x509 -in "$dir/dermedge.crt" -noout -fingerprint -sha256)"
  say "check it on first connection, e.g.: openssl s_client -connect $host:$TLS_PORT </dev/null 2>/dev/null |" \
    "openssl x509 -noout -fingerprint -sha256"
}

# The proxy is only a gate if the daemon cannot be reached around it.
warn_unless_loopback() {
  [[ -z $DESTDIR ]] || return 0
  local host
  host=$(env -C "$APP_DIR" "$APP_DIR/venv/bin/python" -c 'import sys
from device.config import load_config
print(load_config(sys.argv[1]).http.host)' "$CONF_DIR/device.yaml" 2>/dev/null) || return 0
  case $host in
    127.* | ::1 | localhost) ;;
    *) warn "http.host is $host in $CONF_DIR/device.yaml: behind --tls set it to 127.0.0.1," \
      "or the daemon can be reached around nginx" ;;
  esac
}

# nginx names the client in X-Forwarded-For; the daemon believes it from http.trusted_proxies only.
trust_the_proxy() {
  local conf=$DESTDIR$CONF_DIR/device.yaml
  if grep -qx '  trusted_proxies: \[\]' "$conf"; then # the example's default, untouched: set it
    sed -i 's|^  trusted_proxies: \[\]$|  trusted_proxies: ["127.0.0.1"]  # install.sh --tls: nginx on this machine|' "$conf"
    say "set http.trusted_proxies to [\"127.0.0.1\"] in $CONF_DIR/device.yaml (nginx names the clients)"
  elif ! grep -q '^  trusted_proxies:.*127\.0\.0\.1' "$conf"; then
    warn "add 127.0.0.1 to http.trusted_proxies in $CONF_DIR/device.yaml, or every client behind" \
      "nginx counts as one for the wrong-token limit and the page's cookie is not marked Secure"
  fi
}

install_tls() {
  make_certificate
  trust_the_proxy
  local site=$DESTDIR$NGINX_SITE enabled
  enabled=$DESTDIR/etc/nginx/sites-enabled/$(basename "$NGINX_SITE")
  mkdir -p "$(dirname "$site")" "$(dirname "$enabled")"
  sed -e "s|@TLS_DIR@|$TLS_DIR|g" -e "s|@TLS_PORT@|$TLS_PORT|g" -e "s|@HTTP_PORT@|$HTTP_PORT|g" \
    -e "s|@CONNECTIONS_PER_CLIENT@|8|g" -e "s|@REQUESTS_PER_S@|20|g" -e "s|@REQUEST_BURST@|40|g" \
    -e "s|@MAX_BODY_MB@|12|g" "$SRC/device/systemd/nginx-dermedge.conf" >"$site"
  chmod 0644 "$site"
  ln -sfn "$NGINX_SITE" "$enabled"
  say "nginx site $NGINX_SITE: https on port $TLS_PORT -> http://127.0.0.1:$HTTP_PORT"
  warn_unless_loopback
  sys nginx -t
  if "$START" && systemd_running; then
    sys systemctl enable nginx
    sys systemctl reload-or-restart nginx
  fi
}

main() {
  parse_args "$@"
  require_root "$@"
  install_apt_packages
  check_python
  create_user
  install_code_and_models
  if "$WEB"; then install_web_app; fi
  install_venv
  install_config
  install_unit
  if "$TLS"; then install_tls; fi
  say "done. DermEdge is a screening aid, not a diagnosis."
}

main "$@"
