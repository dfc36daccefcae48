#!/usr/bin/env bash
# make demo: a throw-away Dovecot with one demo user, and imap-gateway in front of it.
#   implicit TLS  localhost:10993   (DEMO_IMAPS_PORT)     127.0.0.1 and, if it exists, ::1
#   STARTTLS      localhost:10143   (DEMO_STARTTLS_PORT)
#   metrics       127.0.0.1:10990   (DEMO_METRICS_PORT; skipped when busy)
# The self-signed certificate names localhost, 127.0.0.1 and ::1. The demo prints the host
# name "localhost" for clients: mbsync (isync 1.4) matches only DNS names of a certificate,
# so it refuses "127.0.0.1" whatever the certificate says.
# Everything lives in one temp dir under /tmp; Ctrl-C stops the gateway and Dovecot by PID
# and removes the dir. DEMO_CHECK=1: start, list the INBOX once through the gateway with
# curl (localhost, 127.0.0.1, STARTTLS) and pull it with mbsync when installed, then stop
# (what CI or a quick smoke test wants). DEMO_VENV: the virtualenv to run (default .venv).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RIG_SH=$ROOT/tests/support/rig/rig.sh
IMAPS_PORT=${DEMO_IMAPS_PORT:-10993}
STARTTLS_PORT=${DEMO_STARTTLS_PORT:-10143}
METRICS_PORT=${DEMO_METRICS_PORT:-10990}
DEMO_USER=demo
VENV=${DEMO_VENV:-.venv}
PY=$VENV/bin/python

say() { printf '[demo] %s\n' "$*"; }
die() { printf '[demo] error: %s\n' "$*" >&2; exit 1; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- prerequisites ----------------------------------------------------------------------
if [[ ! -x $PY ]] || ! "$PY" -c 'import gateway.cli' 2>/dev/null; then
  say "creating $VENV and installing imap-gateway (pip install -e '.[test]')"
  [[ -x $PY ]] || python3 -m venv "$VENV"
  "$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
fi
if ! command -v dovecot >/dev/null; then
  say "installing dovecot-imapd"
  scripts/deps.sh dovecot-imapd
fi
for p in "$IMAPS_PORT" "$STARTTLS_PORT"; do
  port_busy "$p" && die "port $p is in use (another demo running?); set DEMO_IMAPS_PORT / DEMO_STARTTLS_PORT"
done
port_busy "$METRICS_PORT" && METRICS_PORT=""

# ---- temp dir and cleanup ----------------------------------------------------------------
DEMO=$(mktemp -d /tmp/igw-demo.XXXXXX)   # short: Dovecot's socket paths must fit 107 bytes
chmod 0755 "$DEMO"   # Dovecot's auth (user dovecot) and mail (nobody) processes walk through it
GW_PID=""
cleanup() {
  trap - EXIT INT TERM
  if [[ -n $GW_PID ]] && kill -0 "$GW_PID" 2>/dev/null; then
    say "stopping gateway (pid $GW_PID)"
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$GW_PID" 2>/dev/null || true
  fi
  if [[ -d $DEMO/dovecot ]]; then
    say "stopping dovecot"
    "$RIG_SH" stop "$DEMO/dovecot" >/dev/null || true
  fi
  rm -rf "$DEMO"
  say "removed $DEMO"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- Dovecot with one demo user -----------------------------------------------------------
DEMO_PASS=$("$PY" -c 'import secrets; print(secrets.token_urlsafe(12))')
mkdir -p "$DEMO/gateway/policies"
printf '%s:%s::::::\n' "$DEMO_USER" "$(doveadm pw -s SHA512-CRYPT -p "$DEMO_PASS")" >"$DEMO/users"
chmod 0644 "$DEMO/users"
export IMAP_PORT PROXY_PORT
IMAP_PORT=$(free_port); IMAPS_BACKEND=$(free_port); PROXY_PORT=$(free_port)
say "starting Dovecot on 127.0.0.1:$IMAP_PORT"
IMAPS_PORT=$IMAPS_BACKEND USERS_FILE=$DEMO/users "$RIG_SH" start "$DEMO/dovecot" >/dev/null
printf 'From: imap-gateway demo <demo@example.org>\r\nTo: %s@example.org\r\nSubject: Welcome to the imap-gateway demo\r\nDate: %s\r\n\r\nThis message was read through imap-gateway.\r\n' \
  "$DEMO_USER" "$(date -R)" | doveadm -c "$DEMO/dovecot/etc/dovecot.conf" save -u "$DEMO_USER"

# ---- gateway ---------------------------------------------------------------------------------
GW=$DEMO/gateway
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
  -keyout "$GW/key.pem" -out "$GW/cert.pem" 2>/dev/null
chmod 0600 "$GW/key.pem"
cat >"$GW/policies/00-demo.toml" <<TOML
# Demo only: the demo user logs in with a password alone. The shipped default
# (policies/99-default.toml) requires a second factor for everyone.
[[rule]]
name = "demo: password only for the demo user"
users = ["$DEMO_USER"]
action = "allow"
mfa = "none"
TOML
# "localhost" may resolve to ::1 first: listen there too when this host has IPv6 loopback.
V6_LISTENERS=""
if "$PY" -c 'import socket; s = socket.socket(socket.AF_INET6); s.bind(("::1", 0))' 2>/dev/null; then
  V6_LISTENERS="
[[listener]]
address = \"[::1]:$IMAPS_PORT\"
mode = \"implicit-tls\"

[[listener]]
address = \"[::1]:$STARTTLS_PORT\"
mode = \"starttls\"
"
fi
cat >"$GW/config.toml" <<TOML
[tls]
cert = "cert.pem"
key = "key.pem"
min_version = "1.2"

[[listener]]
address = "127.0.0.1:$IMAPS_PORT"
mode = "implicit-tls"

[[listener]]
address = "127.0.0.1:$STARTTLS_PORT"
mode = "starttls"
$V6_LISTENERS
[backend]
address = "127.0.0.1:$IMAP_PORT"
tls = "none"
client_ip = "id"
connect_timeout = "5s"

[policy]
dir = "policies"

[admin]
address = ""

[metrics]
address = "${METRICS_PORT:+127.0.0.1:$METRICS_PORT}"

[logging]
format = "json"
level = "info"
file = "gateway.log"
TOML
say "starting imap-gateway"
setsid "$PY" -m gateway serve --config "$GW/config.toml" \
  </dev/null >>"$GW/stderr.log" 2>&1 &
GW_PID=$!
if ! "$PY" - "$IMAPS_PORT" "$GW/cert.pem" <<'PY'
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    try:
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), 2),
                             server_hostname="127.0.0.1") as s:
            if s.recv(4096).startswith(b"* OK"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
then
  tail -n 20 "$GW/stderr.log" "$GW/gateway.log" 2>/dev/null >&2 || true
  die "the gateway did not greet on 127.0.0.1:$IMAPS_PORT within 10 s (logs above)"
fi

# An mbsync config for the demo account (it holds the password: mode 0600, in the temp dir).
MBSYNCRC=$DEMO/mbsyncrc
install -m 0600 /dev/null "$MBSYNCRC"
cat >"$MBSYNCRC" <<RC
IMAPAccount demo
Host localhost
Port $IMAPS_PORT
User $DEMO_USER
Pass "$DEMO_PASS"
SSLType IMAPS
CertificateFile $GW/cert.pem

IMAPStore demo-remote
Account demo

MaildirStore demo-local
Path $DEMO/Maildir/
Inbox $DEMO/Maildir/INBOX

Channel demo
Far :demo-remote:INBOX
Near :demo-local:INBOX
Create Near
Sync Pull
SyncState *
RC
mkdir -p "$DEMO/Maildir"

CURL="curl --cacert $GW/cert.pem imaps://localhost:$IMAPS_PORT/INBOX -u $DEMO_USER:$DEMO_PASS"
cat <<EOF

  imap-gateway demo is running (gateway pid $GW_PID, files in $DEMO)
  The certificate ($GW/cert.pem, self-signed) is valid for localhost, 127.0.0.1 and ::1.

  List the INBOX through the gateway:
    $CURL
  Read the welcome message:
    curl --cacert $GW/cert.pem 'imaps://localhost:$IMAPS_PORT/INBOX;UID=1' -u $DEMO_USER:$DEMO_PASS
  Same over STARTTLS:
    curl --ssl-reqd --cacert $GW/cert.pem imap://localhost:$STARTTLS_PORT/INBOX -u $DEMO_USER:$DEMO_PASS
  Pull the INBOX into $DEMO/Maildir with mbsync (config written for you):
    mbsync -c $MBSYNCRC demo

  Mail client settings (the certificate is self-signed: accept it, or import $GW/cert.pem):
    server    localhost   (mbsync needs the name: it does not accept 127.0.0.1)
    port      $IMAPS_PORT  security: SSL/TLS        (or port $STARTTLS_PORT, security: STARTTLS)
    auth      normal password
    user      $DEMO_USER
    password  $DEMO_PASS

  Gateway log (JSON lines):  tail -f $GW/gateway.log
  Dovecot log:               tail -f $DEMO/dovecot/log/dovecot.log
EOF
[[ -n $METRICS_PORT ]] && echo "  Metrics:                   curl -s http://127.0.0.1:$METRICS_PORT/metrics"
echo
if [[ -n ${DEMO_CHECK:-} ]]; then
  say "DEMO_CHECK: running the curl commands"
  $CURL -sS -X 'STATUS INBOX (MESSAGES)'
  $CURL -sS
  curl -sS --cacert "$GW/cert.pem" "imaps://127.0.0.1:$IMAPS_PORT/INBOX" -u "$DEMO_USER:$DEMO_PASS" \
    -X 'STATUS INBOX (MESSAGES)'
  curl -sS --ssl-reqd --cacert "$GW/cert.pem" "imap://localhost:$STARTTLS_PORT/INBOX" \
    -u "$DEMO_USER:$DEMO_PASS" -X 'STATUS INBOX (MESSAGES)'
  if command -v mbsync >/dev/null; then
    say "DEMO_CHECK: mbsync -c $MBSYNCRC demo"
    mbsync -c "$MBSYNCRC" demo
    pulled=$(find "$DEMO/Maildir/INBOX/new" "$DEMO/Maildir/INBOX/cur" -type f 2>/dev/null | wc -l)
    say "DEMO_CHECK: mbsync pulled $pulled message(s)"
  fi
  exit 0
fi
echo "  Press Ctrl-C to stop and clean up."
wait "$GW_PID" || true
die "the gateway exited (pid $GW_PID); see $GW/stderr.log"
