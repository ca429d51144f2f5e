#!/usr/bin/env bash
# Reload cost: kairos-rs with a 10,000-route config on loopback, in front of an nginx upstream.
#
#   1. Reload time: RELOADS reloads (POST /_kairos/config/reload after rewriting the file,
#      alternating two versions that differ in one route), each timed by the gateway itself
#      (read + validate + build + swap, `applied.duration_ms`) and by curl (the whole call).
#   2. Throughput dip: wrk for DURATION s without reloads, then DURATION s with RATE reloads
#      per second; prints req/s, p50, p99 and max latency of both, and the ratio of the max
#      with reloads to twice the p99 without (the target: at most 1).
#
# Environment: ROUTES (default 10000), RELOADS (default 10), RATE (reloads/s, default 10),
# DURATION (s, default 10), CONNECTIONS (default 50), WORKERS (default 1), PIN (1: the gateway
# on CPU 0, wrk and nginx on CPU 1; default 1), KAIROS_BIN, KEEP_TMP=1. Not part of CI.

set -euo pipefail

ROUTES=${ROUTES:-10000}
RELOADS=${RELOADS:-10}
RATE=${RATE:-10}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
WORKERS=${WORKERS:-1}
PIN=${PIN:-1}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOKEN=reload-bench-token-0123456789

LOG_TAG=reload
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-reload.XXXXXX")
chmod 755 "$TMP"

ensure_kairos_bin
ON_GW=()
ON_AUX=()
if [[ $PIN == 1 ]] && command -v taskset >/dev/null && (($(nproc) >= 2)); then
    ON_GW=(taskset -c 0)
    ON_AUX=(taskset -c 1)
fi

free_port UP_PORT
free_port GW_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT"
"${ON_AUX[@]}" "$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

# version N of the config: ROUTES routes of three shapes plus the hit route; versions differ in
# the rewrite of route r0 only.
write_config() { # file, version
    {
        printf '{ "version": 1,\n'
        printf '  "server": { "host": "127.0.0.1", "port": %s, "workers": %s, "shutdown_timeout": "1s" },\n' "$GW_PORT" "$WORKERS"
        printf '  "admin": { "token": "%s", "watch_config": false },\n' "$TOKEN"
        printf '  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:%s" }] } },\n' "$UP_PORT"
        printf '  "logging": { "level": "warn", "access_log": false },\n'
        printf '  "routes": [\n'
        printf '    { "name": "hit", "path": "/api/items/{id}", "upstream": "up" },\n'
        awk -v n="$ROUTES" -v ver="$2" 'BEGIN {
            for (i = 0; i < n - 1; i++) {
                k = i % 3
                if (k == 0) p = sprintf("/static%d/health", i)
                else if (k == 1) p = sprintf("/svc%d/items/{id}", i)
                else p = sprintf("/files%d/{*rest}", i)
                rw = (i == 0) ? sprintf(", \"rewrite\": \"/v%d\"", ver) : ""
                printf "    { \"name\": \"r%d\", \"path\": \"%s\", \"upstream\": \"up\"%s }%s\n", i, p, rw, (i < n - 2 ? "," : "")
            }
        }'
        printf '  ]\n}\n'
    } >"$1.tmp"
    mv "$1.tmp" "$1"
}
CONFIG=$TMP/kairos.json
write_config "$CONFIG" 0
"${ON_GW[@]}" "$KAIROS_BIN" --config "$CONFIG" >"$TMP/kairos.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
URL="http://127.0.0.1:$GW_PORT/api/items/42"
for _ in $(seq 300); do
    curl -fsS "$URL" >/dev/null 2>&1 && break
    kill -0 "$GW_PID" 2>/dev/null || die "kairos-rs exited: $(tail -5 "$TMP/kairos.log")"
    sleep 0.1
done
curl -fsS "$URL" >/dev/null || die "kairos-rs not ready"

reload() { # version -> prints "server_ms client_s"
    write_config "$CONFIG" "$1"
    local out
    out=$(curl -sS -w ' %{time_total}' -X POST -H "Authorization: Bearer $TOKEN" \
        "http://127.0.0.1:$GW_PORT/_kairos/config/reload")
    local ms
    ms=$(printf '%s' "$out" | sed -n 's/.*"duration_ms":\([0-9.]*\).*/\1/p')
    [[ -n $ms ]] || die "reload failed: $out"
    printf '%s %s\n' "$ms" "${out##* }"
}

log "kairos-rs with $ROUTES routes on :$GW_PORT ($WORKERS worker(s)); $RELOADS timed reloads"
: >"$TMP/reloads.txt"
for ((i = 1; i <= RELOADS; i++)); do
    reload "$i" >>"$TMP/reloads.txt"
done
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
SRV_MED=$(awk '{ print $1 }' "$TMP/reloads.txt" | median)
SRV_MAX=$(awk '{ print $1 }' "$TMP/reloads.txt" | sort -g | tail -1)
CLI_MED=$(awk '{ print $2 * 1000 }' "$TMP/reloads.txt" | median)

run_wrk() { # out file
    "${ON_AUX[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$URL" >"$1"
}
summary() { # wrk output -> "rps p50 p99 max"
    local f=$1
    printf '%s %s %s %s\n' "$(awk '/^Requests\/sec:/ { print $2 }' "$f")" \
        "$(to_ms "$(awk '$1 == "50%" { print $2 }' "$f")")" \
        "$(to_ms "$(awk '$1 == "99%" { print $2 }' "$f")")" \
        "$(to_ms "$(awk '$1 == "Latency" { print $4 }' "$f")")"
}

log "wrk ${DURATION}s without reloads"
"${ON_AUX[@]}" wrk -t1 -c"$CONNECTIONS" -d2s "$URL" >/dev/null
run_wrk "$TMP/base.txt"
log "wrk ${DURATION}s with $RATE reloads/s"
# The loop (awk writing the config, curl) runs on the wrk/upstream CPU, so that what the
# gateway's CPU loses is the reload itself.
[[ ${#ON_AUX[@]} -gt 0 ]] && taskset -p -c 1 $$ >/dev/null
(
    n=1000
    end=$(($(date +%s) + DURATION))
    pause=$(awk -v r="$RATE" 'BEGIN { printf "%.3f", 1 / r }')
    while (($(date +%s) < end)); do
        n=$((n + 1))
        reload "$n" >>"$TMP/dip-reloads.txt" || exit 1
        sleep "$pause"
    done
) &
LOOP=$!
PIDS+=("$LOOP")
[[ ${#ON_AUX[@]} -gt 0 ]] && taskset -p -c 0-"$(($(nproc) - 1))" $$ >/dev/null
run_wrk "$TMP/dip.txt"
wait "$LOOP" || die "a reload failed during the load"
forget "$LOOP"
for f in base dip; do
    grep -q -e 'Non-2xx' -e 'Socket errors' "$TMP/$f.txt" && die "errors during the $f run: $(grep -e Non-2xx -e 'Socket errors' "$TMP/$f.txt")"
done
read -r B_RPS B_P50 B_P99 B_MAX <<<"$(summary "$TMP/base.txt")"
read -r D_RPS D_P50 D_P99 D_MAX <<<"$(summary "$TMP/dip.txt")"
N_DIP=$(wc -l <"$TMP/dip-reloads.txt")
DIP_MED=$(awk '{ print $1 }' "$TMP/dip-reloads.txt" | median)

echo
echo "reload of a $ROUTES-route config, $WORKERS worker(s), pinning: ${ON_GW[*]:-none}"
echo "reload time (gateway: read + validate + build + swap), $RELOADS reloads: median ${SRV_MED} ms, max ${SRV_MAX} ms; whole API call median ${CLI_MED} ms"
printf '%-22s %10s %9s %9s %9s\n' run "req/s" "p50 ms" "p99 ms" "max ms"
printf '%-22s %10s %9s %9s %9s\n' "no reloads" "$B_RPS" "$B_P50" "$B_P99" "$B_MAX"
printf '%-22s %10s %9s %9s %9s\n' "$RATE reloads/s ($N_DIP)" "$D_RPS" "$D_P50" "$D_P99" "$D_MAX"
echo "reload time under load: median ${DIP_MED} ms"
echo "req/s with reloads / without: $(awk -v a="$D_RPS" -v b="$B_RPS" 'BEGIN { printf "%.3f", a / b }')"
echo "max latency with reloads / (2 x p99 without): $(awk -v a="$D_MAX" -v b="$B_P99" 'BEGIN { printf "%.2f", a / (2 * b) }')"
