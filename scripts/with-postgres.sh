#!/usr/bin/env bash
# Runs COMMAND… against a throwaway Postgres server, then removes the server.
#
#   scripts/with-postgres.sh cargo test --features postgres
#
# - Installs Debian's `postgresql` package if no server is installed (as root).
# - Starts a new cluster in a temporary folder, on 127.0.0.1 and a free port,
#   with trust authentication for the user `postgres`. It does not touch the
#   Debian default cluster.
# - Turns TLS on with a certificate for 127.0.0.1 signed by a CA of its own,
#   and exports that CA's file as CREDPOOL_TEST_POSTGRES_CA.
# - Exports CREDPOOL_TEST_POSTGRES_URL (postgres://postgres@127.0.0.1:PORT/postgres),
#   and CREDPOOL_TEST_POSTGRES_CTL, a command that takes `restart` or `stop`,
#   for fault tests that restart the server.
# - Stops the server and removes the folder whatever the command's outcome,
#   and exits with the command's status.
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: scripts/with-postgres.sh COMMAND [ARG...]" >&2
    exit 2
fi

say() { echo "with-postgres: $*" >&2; }

server_bin() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
        echo "$dir"
    fi
}

bin=$(server_bin)
if [ -z "$bin" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "no Postgres server is installed, and installing one needs root:"
        say "run 'apt-get install -y postgresql' as root, then this script again"
        exit 1
    fi
    say "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    bin=$(server_bin)
    if [ -z "$bin" ]; then
        say "postgresql was installed but no initdb/pg_ctl was found under /usr/lib/postgresql"
        exit 1
    fi
fi

# initdb refuses to run as root: as root, the server runs as `postgres`.
if [ "$(id -u)" -eq 0 ]; then
    owner=postgres
    as_owner() { runuser -u postgres -- "$@"; }
else
    owner=$(id -un)
    as_owner() { "$@"; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/credpool-postgres.XXXXXX")
chmod 755 "$work"
data="$work/data"
sockets="$work/sockets"
log="$work/server.log"
install -d -o "$owner" -m 700 "$data"
install -d -o "$owner" -m 700 "$sockets"
install -o "$owner" -m 600 /dev/null "$log"

stop_server() {
    as_owner "$bin/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap stop_server EXIT

as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >"$work/initdb.log" 2>&1 || {
    cat "$work/initdb.log" >&2
    say "initdb failed"
    exit 1
}

# TLS: a CA of its own signs the server's certificate (for 127.0.0.1), so
# that tests can connect with sslmode=require and sslrootcert=$CA. The
# server still takes connections in the clear. openssl comes with Debian's
# postgresql package (through ssl-cert).
tls="$work/tls"
tls_options=""
if command -v openssl >/dev/null 2>&1; then
    mkdir -p "$tls"
    chmod 700 "$tls"
    if openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=credpool test CA" \
            -keyout "$tls/ca.key" -out "$tls/ca.crt" >"$tls/openssl.log" 2>&1 \
        && openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
            -keyout "$tls/server.key" -out "$tls/server.csr" >>"$tls/openssl.log" 2>&1 \
        && printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext" \
        && openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" \
            -CAcreateserial -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt" >>"$tls/openssl.log" 2>&1; then
        chown "$owner" "$tls/server.key" "$tls/server.crt"
        chmod 600 "$tls/server.key" "$tls/ca.key"
        chmod 755 "$tls"
        tls_options="-c ssl=on -c ssl_cert_file=$tls/server.crt -c ssl_key_file=$tls/server.key"
        export CREDPOOL_TEST_POSTGRES_CA="$tls/ca.crt"
    else
        cat "$tls/openssl.log" >&2
        say "could not make a certificate: the server runs without TLS"
    fi
else
    say "no openssl: the server runs without TLS"
fi

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

started=
for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    port_is_free "$port" || continue
    options="-c listen_addresses=127.0.0.1 -p $port -k $sockets -c max_connections=400 $tls_options"
    if as_owner "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -o "$options" start >/dev/null; then
        started=1
        break
    fi
done
if [ -z "$started" ]; then
    tail -n 30 "$log" >&2 || true
    say "the server did not start"
    exit 1
fi

export CREDPOOL_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
ctl="$work/ctl"
cat >"$ctl" <<EOF
#!/usr/bin/env bash
# $ctl restart|stop|start: controls the throwaway server.
set -euo pipefail
if [ "\$(id -u)" -eq 0 ] && [ "$owner" = postgres ]; then run() { runuser -u postgres -- "\$@"; }; else run() { "\$@"; }; fi
run "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -m fast -o "$options" "\$1" >/dev/null
EOF
chmod 755 "$ctl"
export CREDPOOL_TEST_POSTGRES_CTL="$ctl"
say "server on 127.0.0.1:$port (data in $data)"

status=0
"$@" || status=$?
exit "$status"
