#!/usr/bin/env bash
# Install the Debian packages the suite and the demo need, but only those that are missing.
#   scripts/deps.sh [PACKAGE...]     (default: everything `make test` needs)
# Needs root for apt-get (CI runs as root); as non-root it only reports what is missing.
# A temporary policy-rc.d keeps the packages' postinst from starting system services
# (dovecot, haproxy, redis, prometheus) with their /etc configs; it is removed afterwards
# unless one was already there.
set -euo pipefail

PACKAGES=("$@")
if ((${#PACKAGES[@]} == 0)); then
  # dovecot-pop3d: the auth-policy tests log in over POP3; second line: what
  # scripts/imaptest.sh needs to build Dovecot's imaptest; third: the
  # browser the portal's end-to-end tests drive (tests/support/browser.py); fourth: the
  # PostgreSQL server the credential store tests start (tests/support/postgres.py) and the
  # libpq that psycopg loads for [store] url
  PACKAGES=(dovecot-imapd dovecot-pop3d haproxy isync redis-server prometheus curl openssl python3-venv
            dovecot-dev autoconf automake libtool pkg-config gcc make patch
            chromium
            postgresql libpq5)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$p")
done

if ((${#missing[@]} == 0)); then
  echo "deps: all present (${PACKAGES[*]})"
  exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
  echo "deps: missing Debian packages: ${missing[*]}" >&2
  echo "deps: run as root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

echo "deps: installing ${missing[*]}"
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $POLICY ]]; then
  printf '#!/bin/sh\n# added by imap-gateway scripts/deps.sh during apt-get install\nexit 101\n' >"$POLICY"
  chmod +x "$POLICY"
  created_policy=1
fi
cleanup() { if ((created_policy)); then rm -f "$POLICY"; fi; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# "when needed": a fresh image has no package lists, and stale lists give 404s.
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
echo "deps: installed ${missing[*]}"
