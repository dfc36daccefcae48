#!/usr/bin/env bash
# Throw-away Dovecot IMAP server for the test suite and `make demo`, everything under one directory.
#   rig.sh start  DIR   create DIR (cert, users, config), start Dovecot, wait until IMAP answers
#   rig.sh stop   DIR   stop the Dovecot started for DIR and wait until it is gone
#   rig.sh status DIR   exit 0 if it runs (prints pid and ports), 3 if not
#   rig.sh render DIR   only create DIR and the config (no start) -> for `dovecot -F -c DIR/etc/dovecot.conf`
# Environment: IMAP_PORT IMAPS_PORT PROXY_PORT (required for start/render: several rigs run side by side on
#   one machine, so there are no fixed defaults; the caller picks free ports), and (defaults) MAIL_UID=nobody
#   MAIL_GID=<primary group of MAIL_UID> DISABLE_PLAINTEXT_AUTH=yes TRUSTED_NETWORKS="127.0.0.0/8 ::1/128"
#   USERS_FILE=<this dir>/users START_TIMEOUT=20 EXTRA_CONF=<file appended to the config, e.g. a POP3
#   service or an auth policy; later settings override the template's>
# Project copy of /work/shared/reference/dovecot-rig (see its README, "Gotchas"); changes: ports required,
#   USERS_FILE, instance name per DIR.
# Needs: dovecot-imapd (Debian package: gives the dovecot/dovenull users), openssl. Meant to run as root;
#   as non-root it runs every Dovecot process as the invoking user (mail files owned by that user).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CMD=${1:-}
DIR=${2:-}
if [[ -z "$CMD" || -z "$DIR" ]]; then
  sed -n '2,10p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
case "$CMD" in start | render) mkdir -p "$DIR" ;; esac
[[ -d "$DIR" ]] || { echo "not running (no dir $DIR)"; [[ $CMD == stop ]] && exit 0; exit 3; }
DIR=$(cd "$DIR" && pwd)
# Unix socket paths must fit 107 bytes; the longest one is $DIR/run/token-login/imap-urlauth (+29).
((${#DIR} <= 78)) || { echo "rig.sh: DIR path too long (${#DIR} > 78 chars): $DIR" >&2; exit 1; }
CONF=$DIR/etc/dovecot.conf
PIDFILE=$DIR/run/master.pid

IMAP_PORT=${IMAP_PORT:-}
IMAPS_PORT=${IMAPS_PORT:-}
PROXY_PORT=${PROXY_PORT:-}
USERS_FILE=${USERS_FILE:-$HERE/users}
ROOT=0; [[ $(id -u) -eq 0 ]] && ROOT=1
if ((ROOT)); then MAIL_UID=${MAIL_UID:-nobody}; else MAIL_UID=$(id -un); fi  # non-root: no uid switching
MAIL_GID=${MAIL_GID:-$(id -gn "$MAIL_UID")}
DISABLE_PLAINTEXT_AUTH=${DISABLE_PLAINTEXT_AUTH:-yes}
TRUSTED_NETWORKS=${TRUSTED_NETWORKS-127.0.0.0/8 ::1/128}  # may be set empty
START_TIMEOUT=${START_TIMEOUT:-20}

die() { echo "rig.sh: $*" >&2; exit 1; }

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

# 0 when something accepts TCP on 127.0.0.1:$1 (bash /dev/tcp, no extra tools)
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# 0 when 127.0.0.1:$1 sends an IMAP "* OK" greeting (imap-login only greets once auth is up)
greets() {
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    IFS= read -r -t 2 line <&3 || exit 1
    printf 'a LOGOUT\r\n' >&3
    [[ $line == "* OK"* ]]
  ) 2>/dev/null
}

# alive PID: exists and is not a zombie (the daemonized master's parent is PID 1, which may reap late)
alive() { [[ -r "/proc/$1/stat" ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# pid of the running master for DIR, or nothing
running_pid() {
  [[ -s "$PIDFILE" ]] || return 1
  local pid
  pid=$(cat "$PIDFILE")
  alive "$pid" || return 1
  # guard against a recycled pid: it must be a dovecot master using our config
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$CONF" || return 1
  echo "$pid"
}

render() {
  [[ -n "$IMAP_PORT" && -n "$IMAPS_PORT" && -n "$PROXY_PORT" ]] ||
    die "set IMAP_PORT, IMAPS_PORT and PROXY_PORT (free ports; other rigs may run on this machine)"
  [[ -r "$USERS_FILE" ]] || die "USERS_FILE=$USERS_FILE: not readable"
  command -v dovecot >/dev/null || die "dovecot not installed: apt-get install -y dovecot-imapd"
  mkdir -p "$DIR"/{etc,tls,run,state,log,mail}
  if ((ROOT)); then
    if ! getent passwd dovecot >/dev/null || ! getent passwd dovenull >/dev/null; then
      die "users dovecot/dovenull missing (created by the dovecot-core package)"
    fi
    getent passwd "$MAIL_UID" >/dev/null || die "MAIL_UID=$MAIL_UID: no such user"
    # Mail processes run as MAIL_UID and the auth process as dovecot: both must walk down into DIR.
    chmod 0755 "$DIR" "$DIR/etc"
    chown "$MAIL_UID:$MAIL_GID" "$DIR/mail"
    if ! setpriv --reuid="$MAIL_UID" --regid="$MAIL_GID" --clear-groups test -w "$DIR/mail" ||
       ! setpriv --reuid=dovecot --regid=dovecot --clear-groups test -x "$DIR/etc"; then
      die "$MAIL_UID or dovecot cannot reach into $DIR (a parent dir is probably mode 0700); use a dir under /tmp"
    fi
  fi

  if [[ ! -s "$DIR/tls/cert.pem" ]]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=localhost" \
      -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
      -keyout "$DIR/tls/key.pem" -out "$DIR/tls/cert.pem" 2>/dev/null
    cat "$DIR/tls/cert.pem" "$DIR/tls/key.pem" >"$DIR/tls/combined.pem"  # haproxy wants one file
    chmod 0600 "$DIR/tls/key.pem" "$DIR/tls/combined.pem"
  fi

  # read by the auth process, which runs as user dovecot (as the invoking user when not root)
  local g=dovecot
  ((ROOT)) || g=$(id -gn)
  install -m 0640 -g "$g" "$USERS_FILE" "$DIR/etc/users"
  install -m 0640 -g "$g" "$HERE/master-users" "$DIR/etc/master-users"
  sed -e "s|@RIGDIR@|$DIR|g" \
      -e "s|@IMAP_PORT@|$IMAP_PORT|g" -e "s|@IMAPS_PORT@|$IMAPS_PORT|g" -e "s|@PROXY_PORT@|$PROXY_PORT|g" \
      -e "s|@INSTANCE@|igw-rig-$(basename "$DIR")|g" \
      -e "s|@MAIL_UID@|$MAIL_UID|g" -e "s|@MAIL_GID@|$MAIL_GID|g" \
      -e "s|@DISABLE_PLAINTEXT_AUTH@|$DISABLE_PLAINTEXT_AUTH|g" -e "s|@TRUSTED_NETWORKS@|$TRUSTED_NETWORKS|g" \
      "$HERE/dovecot.conf.in" >"$CONF"
  if [[ -n "${EXTRA_CONF:-}" ]]; then
    [[ -r "$EXTRA_CONF" ]] || die "EXTRA_CONF=$EXTRA_CONF: not readable"
    { echo; echo "# --- appended from EXTRA_CONF=$EXTRA_CONF ---"; cat "$EXTRA_CONF"; } >>"$CONF"
  fi
  if ! ((ROOT)); then
    # Non-root: Dovecot cannot switch users or chroot, so every process runs as the invoking user.
    cat >>"$CONF" <<EOF

# --- added by rig.sh because it ran as non-root ($(id -un)) ---
default_internal_user = $(id -un)
default_internal_group = $(id -gn)
default_login_user = $(id -un)
service imap-login {
  chroot =
}
service anvil {
  chroot =
}
EOF
  fi
  doveconf -c "$CONF" -n >/dev/null || die "doveconf rejected $CONF"
}

start() {
  if pid=$(running_pid); then die "already running (pid $pid)"; fi
  [[ -n "$IMAP_PORT" && -n "$IMAPS_PORT" && -n "$PROXY_PORT" ]] ||
    die "set IMAP_PORT, IMAPS_PORT and PROXY_PORT (free ports; other rigs may run on this machine)"
  local p
  for p in "$IMAP_PORT" "$IMAPS_PORT" "$PROXY_PORT"; do
    port_open "$p" && die "port $p already in use (set IMAP_PORT/IMAPS_PORT/PROXY_PORT)"
  done
  # base_dir is not reused: a stale socket left by an older config (e.g. anvil-auth-penalty) can stall auth.
  rm -rf "$DIR/run"
  render
  local t0
  t0=$(now)
  # Daemonizes; master pid goes to $DIR/run/master.pid. The master and its log process keep the stderr
  # they were started with: without this redirect, `rig.sh start | tee` or Python's
  # subprocess.run(..., capture_output=True) would wait forever for EOF on that pipe.
  if ! dovecot -c "$CONF" </dev/null >"$DIR/log/dovecot.stderr" 2>&1; then
    cat "$DIR/log/dovecot.stderr" >&2
    die "dovecot failed to start"
  fi
  # The master binds every listener before it daemonizes (a busy port makes `dovecot` exit non-zero),
  # so waiting for the greeting on the plain port is enough.
  local deadline=$((SECONDS + START_TIMEOUT))
  until greets "$IMAP_PORT"; do
    ((SECONDS < deadline)) || { tail -20 "$DIR/log/dovecot.log" >&2; die "no IMAP greeting on :$IMAP_PORT after ${START_TIMEOUT}s"; }
    sleep 0.02
  done
  printf 'dovecot started: pid %s, imap 127.0.0.1:%s, imaps 127.0.0.1:%s, haproxy 127.0.0.1:%s, ready in %ss\n' \
    "$(cat "$PIDFILE")" "$IMAP_PORT" "$IMAPS_PORT" "$PROXY_PORT" "$(elapsed "$t0")"
}

stop() {
  local pid t0
  if ! pid=$(running_pid); then echo "dovecot not running for $DIR"; return 0; fi
  t0=$(now)
  # Same as `doveadm -c CONF stop`, but that one waits until the pid vanishes, i.e. also until the master
  # (a child of PID 1 once daemonized) is reaped; the master itself sleeps ~1s while shutting down.
  kill -TERM "$pid"
  for _ in $(seq 1 500); do
    alive "$pid" || break
    sleep 0.02
  done
  if alive "$pid"; then
    kill -KILL "$pid"
    echo "dovecot pid $pid did not stop in 10s: killed" >&2
  fi
  printf 'dovecot stopped (pid %s) in %ss\n' "$pid" "$(elapsed "$t0")"
}

status() {
  local pid
  if pid=$(running_pid); then
    echo "running: pid $pid, log $DIR/log/dovecot.log"
  else
    echo "not running"
    return 3
  fi
}

case "$CMD" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  render) render; echo "$CONF" ;;
  *) die "unknown command $CMD (start|stop|status|render)" ;;
esac
