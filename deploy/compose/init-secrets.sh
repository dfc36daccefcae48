#!/bin/sh
# Create the secrets the compose stack needs, once, under deploy/compose/secrets/:
#   gateway/tls/{cert,key}.pem   self-signed certificate for the gateway's listeners
#   gateway/master_password      Dovecot master password, in clear, for the gateway
#   dovecot/master-users         the same password hashed, for Dovecot's master passdb
#   dovecot/users                one demo mailbox user (password printed once)
#   grafana_admin_password       Grafana's admin password
# Existing files are kept: run it again after deleting one to make that one anew.
# Run as root (sudo): the gateway's files must belong to the container's uid (10001).
#
# Env: SECRETS_DIR (default: secrets/ beside this script), GATEWAY_HOSTNAME (certificate
# name, default localhost), GATEWAY_UID (default 10001), DEMO_USER (default demo).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
dir=${SECRETS_DIR:-$here/secrets}
host=${GATEWAY_HOSTNAME:-localhost}
uid=${GATEWAY_UID:-10001}
demo=${DEMO_USER:-demo}
# Must match the imap-backend subnet in deploy/docker-compose.yml.
backend_net=${BACKEND_NET:-172.30.53.0/24}

if [ "$(id -u)" != 0 ]; then
    echo "init-secrets.sh: run as root (sudo): the files must be chowned to uid $uid" >&2
    exit 1
fi
command -v openssl >/dev/null || { echo "init-secrets.sh: openssl is required" >&2; exit 1; }

umask 077
mkdir -p "$dir/gateway/tls" "$dir/dovecot"
chmod 0700 "$dir"

randpw() { openssl rand -base64 24 | tr -d '/+=\n'; }

if [ ! -f "$dir/gateway/tls/key.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
        -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
        -keyout "$dir/gateway/tls/key.pem" -out "$dir/gateway/tls/cert.pem" 2>/dev/null
    echo "made a self-signed certificate for $host (replace gateway/tls/*.pem with a real one)"
fi

if [ ! -f "$dir/gateway/master_password" ]; then
    master=$(randpw)
    printf '%s\n' "$master" > "$dir/gateway/master_password"
    # passwd-file: user:password:uid:gid:gecos:home:shell:extra_fields
    printf 'gateway:{SHA512-CRYPT}%s::::::allow_nets=%s\n' \
        "$(printf '%s' "$master" | openssl passwd -6 -stdin)" "$backend_net" \
        > "$dir/dovecot/master-users"
    echo "made the Dovecot master password (gateway/master_password, dovecot/master-users)"
fi

if [ ! -f "$dir/dovecot/users" ]; then
    pw=$(randpw)
    printf '%s:{SHA512-CRYPT}%s::::::\n' "$demo" "$(printf '%s' "$pw" | openssl passwd -6 -stdin)" \
        > "$dir/dovecot/users"
    echo "demo mailbox user: $demo  password: $pw  (shown once)"
fi

if [ ! -f "$dir/grafana_admin_password" ]; then
    randpw > "$dir/grafana_admin_password"
    echo "Grafana admin password: see $dir/grafana_admin_password"
fi

# The gateway (uid $uid) reads its directory and refuses a master password or key readable by
# others. Dovecot's and Grafana's files are bind-mounted one by one, so they are readable in
# their containers while $dir (0700, root) keeps them from other users of this host.
chown -R "$uid:$uid" "$dir/gateway"
chmod 0700 "$dir/gateway" "$dir/gateway/tls"
chmod 0600 "$dir/gateway/master_password" "$dir/gateway/tls/key.pem"
chmod 0644 "$dir/gateway/tls/cert.pem" "$dir/dovecot/users" "$dir/dovecot/master-users" \
    "$dir/grafana_admin_password"
chmod 0755 "$dir/dovecot"
