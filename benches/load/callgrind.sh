#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: one gateway worker, N sequential
# keep-alive requests (curl -K), minus a run with no requests (start-up and shutdown). Stable
# from run to run on a noisy machine, unlike requests per second. The recipe, explained, is in
# benches/load/README.md ("Instructions per request").
#
# Usage: benches/load/callgrind.sh [BIN] [N]
#   BIN  the gateway binary (default: target/release/kairos-rs)
#   N    requests (default 20000)
# Environment: EXTRA=', "tracing": {...}' adds top-level config keys; PORT_BASE (default 19001)
# picks the three loopback ports (upstream, gateway, OTLP sink); CG_OUT=FILE keeps the callgrind
# profile of the measured run (for callgrind_annotate); ACCESS_LOG=true turns the access log on
# (kept in the admin UI's log ring; written to the gateway's stderr only at a level that lets
# `kairos::access` info lines through: LEVEL=info, the default level of a config, where the
# default here is warn); STREAM=1 gives the
# gateway an admin token and keeps a client reading /_kairos/events (the admin UI's live
# stream) connected during the measured requests. ROUTE_EXTRA=', "auth": "jwt"' adds keys to
# the route; HEADER='Authorization: Bearer ...' sends a header with every request (curl only).
# CLIENT=h2load sends the N requests with h2load over h2c instead (H2_CONNECTIONS connections,
# default 4, H2_STREAMS streams each, default 16); UPSTREAM=h2c sends them to an h2c (prior
# knowledge) nginx upstream, the route's upstream having "protocol": "h2c" (the same answer, on
# a fourth port).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$ROOT/target/release/kairos-rs}"
N="${2:-20000}"
P="${PORT_BASE:-19001}"
UP=$P; GW=$((P + 1)); SINK=$((P + 2)); H2UP=$((P + 3))
CLIENT="${CLIENT:-curl}"
UPSTREAM="${UPSTREAM:-http1}"
case "$CLIENT" in curl | h2load) ;; *) echo "CLIENT must be curl or h2load" >&2; exit 1 ;; esac
case "$UPSTREAM" in http1 | h2c) ;; *) echo "UPSTREAM must be http1 or h2c" >&2; exit 1 ;; esac
for tool in valgrind nginx curl ss taskset "$CLIENT"; do
    command -v "$tool" >/dev/null || { echo "callgrind.sh needs $tool" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "no gateway binary at $BIN (cargo build --release)" >&2; exit 1; }
W=$(mktemp -d)
cleanup() {
    [ -f "$W/up.pid" ] && kill "$(cat "$W/up.pid")" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

cat > "$W/up.conf" <<CONF
user root;
worker_processes 1;
pid $W/up.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP; location / { return 200 "ok"; } }
    server { listen 127.0.0.1:$SINK; location / { return 200; } }
    server { listen 127.0.0.1:$H2UP http2; location / { return 200 "ok"; } }
}
CONF
taskset -c 1 nginx -e "$W/up-error.log" -p "$W" -c "$W/up.conf"
until ss -Htln | grep -q ":$UP "; do sleep 0.1; done

STREAM_TOKEN=callgrind-stream-token-0123456789
if [ "${STREAM:-0}" = 1 ]; then ADMIN=", \"admin\": { \"token\": \"$STREAM_TOKEN\" }"; fi
# The config in a folder of its own: the config watcher watches its folder, and the
# gateway's stderr (the access log) is written into $W.
mkdir -p "$W/conf"
cat > "$W/conf/kairos.json" <<CONF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $GW, "workers": 1, "shutdown_timeout": "1s" },
  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:$UP" }] },
                 "h2c": { "servers": [{ "url": "http://127.0.0.1:$H2UP" }], "protocol": "h2c" } },
  "routes": [{ "name": "all", "path": "/{*rest}", "upstream": "$([ "$UPSTREAM" = h2c ] && echo h2c || echo up)" ${ROUTE_EXTRA:-} }],
  "logging": { "level": "${LEVEL:-warn}", "access_log": ${ACCESS_LOG:-false} } ${ADMIN:-} ${EXTRA:-} }
CONF
awk -v n="$N" -v u="http://127.0.0.1:$GW/api/items/42" \
    -v h="${HEADER:-}" 'BEGIN {
        if (h != "") printf "header = \"%s\"\n", h
        for (i = 0; i < n; i++) printf "url = \"%s\"\n", u
    }' > "$W/urls.txt"

# One callgrind run; $1 = number of requests (0 = start, wait for the port, stop).
run() {
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$W/kairos-$1.out" \
        "$BIN" --config "$W/conf/kairos.json" 2>"$W/kairos-$1.vg.log" &
    local vg=$!
    until ss -Htln | grep -q ":$GW "; do kill -0 $vg || { cat "$W/kairos-$1.vg.log" >&2; return 1; }; sleep 0.2; done
    local stream=
    if [ "$1" -gt 0 ] && [ "${STREAM:-0}" = 1 ]; then
        taskset -c 1 curl -sN -H "Authorization: Bearer $STREAM_TOKEN" \
            "http://127.0.0.1:$GW/_kairos/events" > "$W/stream.txt" &
        stream=$!
    fi
    if [ "$1" -gt 0 ] && [ "$CLIENT" = h2load ]; then
        taskset -c 1 h2load -n "$1" -c "${H2_CONNECTIONS:-4}" -m "${H2_STREAMS:-16}" \
            "http://127.0.0.1:$GW/api/items/42" > "$W/h2load.txt"
        grep -q " $1 succeeded, 0 failed" "$W/h2load.txt" && grep -q "codes: $1 2xx" "$W/h2load.txt" ||
            { cat "$W/h2load.txt" >&2; return 1; }
    elif [ "$1" -gt 0 ]; then
        taskset -c 1 curl -sf -K <(head -n "$(($1 + HEAD_LINES))" "$W/urls.txt") >/dev/null
    fi
    if [ -n "$stream" ]; then
        kill $stream; wait $stream || true
        echo "stream: $(grep -c '^event: stats' "$W/stream.txt") stats events" >&2
    fi
    sleep 1; kill -TERM $vg; wait $vg || true
}
HEAD_LINES=0; [ -n "${HEADER:-}" ] && HEAD_LINES=1
ir() { awk '/^totals:/ { print $2 }' "$1"; }
run 0
run "$N"
if [ -n "${CG_OUT:-}" ]; then cp "$W/kairos-$N.out" "$CG_OUT"; fi
echo "$(( ($(ir "$W/kairos-$N.out") - $(ir "$W/kairos-0.out")) / N )) instructions per request ($N requests, $(basename "$BIN"), $CLIENT, $UPSTREAM upstream)"
