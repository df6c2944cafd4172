#!/usr/bin/env bash
# A throwaway PostgreSQL server for the sweep test of two workers on one shared study
# (tests/test_sweep.py). Installs Debian's postgresql when it is missing, starts a private
# cluster in a temporary directory that listens on a Unix socket only (no TCP port, nothing
# shared with a system cluster), and prints its URL on stdout; messages and timing go to stderr.
# The server stops and its directory is removed once the process whose PID is $1 (the CI
# script) has ended. Exits non-zero, printing no URL, when it cannot start one.
#
#   export GRUFINITY_TEST_POSTGRES="$(bash .ci/postgres.sh $$ || true)"
set -euo pipefail
watch="${1:?usage: postgres.sh PID-to-outlive}"
start=$(date +%s)
log() { echo "postgres: $*" >&2; }

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin || true)"
if [ -z "$bin" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        log "not installed, and installing it needs root and apt-get"; exit 1
    fi
    log "installing postgresql (apt-get)"
    # The package would start Debian's own cluster; ours is private, so keep services down
    # while it installs (policy-rc.d exit 101 = "do not start"), unless a policy exists.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    fi
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        postgresql >/dev/null; } || { [ -z "$policy" ] || rm -f "$policy"; log "apt-get install postgresql failed"; exit 1; }
    [ -z "$policy" ] || rm -f "$policy"
    bin="$(find_bin)"
    log "installed in $(( $(date +%s) - start ))s"
fi

# PostgreSQL refuses to run as root: as root, run it as the postgres user the package made.
as_pg=()
[ "$(id -u)" = 0 ] && as_pg=(runuser -u postgres --)
dir="$(mktemp -d /tmp/grufinity-pg.XXXXXX)"
[ "$(id -u)" = 0 ] && chown postgres: "$dir"

"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -U grufinity -A trust -E UTF8 --no-sync >/dev/null
# Test data only: no fsync, socket in our directory, no TCP.
"${as_pg[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s \
    -o "-k $dir -c listen_addresses= -c fsync=off -c full_page_writes=off" start
"${as_pg[@]}" "$bin/createdb" -h "$dir" -U grufinity grufinity

# Outlive the CI script, not this one (it ends at once): detached, with no open stdout, so the
# $(...) that reads the URL does not wait for it.
nohup setsid bash -c "while kill -0 $watch 2>/dev/null; do sleep 2; done
    ${as_pg[*]} $bin/pg_ctl -D $dir/data -m fast -s stop; rm -rf $dir" >/dev/null 2>&1 </dev/null &

log "server ready in $(( $(date +%s) - start ))s (socket in $dir)"
echo "postgresql://grufinity@/grufinity?host=$dir"
