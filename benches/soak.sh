#!/usr/bin/env bash
# Soak test: kairos-rs under steady load for a long time (default 10 minutes), on loopback,
# in front of an nginx upstream; samples the gateway's resident memory and prints it at the
# start, the end and its peak. Fails if memory grew by more than GROWTH_LIMIT_MB between the
# end of the warm-up and the end, or if any response was not 2xx. Not part of CI.
#
#   benches/soak.sh                    # 600 s, wrk -t1 -c50
#   DURATION=60 benches/soak.sh        # a shorter run
#
# Environment: DURATION (s, default 600), CONNECTIONS (default 50), WARMUP (s, default 30),
# GROWTH_LIMIT_MB (default 5), KAIROS_BIN (default: cargo build --release), TRACING=1 adds
# tracing at sampling 0.1 to a sink (default 0), KEEP_TMP=1 keeps the temp dir.

set -euo pipefail

DURATION=${DURATION:-600}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-30}
GROWTH_LIMIT_MB=${GROWTH_LIMIT_MB:-5}
TRACING=${TRACING:-0}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

LOG_TAG=soak
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-soak.XXXXXX")
chmod 755 "$TMP"

ensure_kairos_bin

free_port UP_PORT
free_port SINK_PORT
free_port GW_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT" "$SINK_PORT"
"$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

TRACING_JSON=""
[[ $TRACING == 1 ]] && TRACING_JSON=", \"tracing\": { \"endpoint\": \"http://127.0.0.1:$SINK_PORT\", \"sampling_rate\": 0.1 }"
cat >"$TMP/kairos.json" <<EOF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $GW_PORT, "workers": 1, "shutdown_timeout": "1s" },
  "admin": { "public_metrics": true },
  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:$UP_PORT" }] } },
  "routes": [{ "name": "items", "path": "/api/items/{id}", "upstream": "up" },
             { "name": "all", "path": "/{*rest}", "upstream": "up" }],
  "logging": { "level": "warn", "access_log": false }$TRACING_JSON }
EOF
"$KAIROS_BIN" --config "$TMP/kairos.json" >"$TMP/kairos.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
ready=0
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$GW_PORT/api/items/1" >/dev/null 2>&1 && ready=1 && break
    kill -0 "$GW_PID" 2>/dev/null || die "kairos-rs exited: $(tail -5 "$TMP/kairos.log")"
    sleep 0.1
done
((ready)) || die "kairos-rs not ready after 10 s: $(tail -5 "$TMP/kairos.log")"

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
log "kairos-rs $KAIROS_BIN on :$GW_PORT; ${WARMUP}s warm-up, then ${DURATION}s at wrk -t1 -c$CONNECTIONS"
wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "http://127.0.0.1:$GW_PORT/api/items/42" >/dev/null
START=$(rss_kb "$GW_PID")
wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$GW_PORT/api/items/42" >"$TMP/wrk.txt" &
WRK=$!
PIDS+=("$WRK")
PEAK=$START
SAMPLES="$TMP/rss.tsv"
t0=$(date +%s)
while kill -0 "$WRK" 2>/dev/null; do
    now=$(rss_kb "$GW_PID" || echo 0)
    ((now > PEAK)) && PEAK=$now
    printf '%s\t%s\n' "$(($(date +%s) - t0))" "$now" >>"$SAMPLES"
    sleep 10
done
wait "$WRK" || true
forget "$WRK"
kill -0 "$GW_PID" 2>/dev/null || die "kairos-rs died during the soak: $(tail -5 "$TMP/kairos.log")"
END=$(rss_kb "$GW_PID")
METRICS=$(curl -fsS "http://127.0.0.1:$GW_PORT/_kairos/metrics")

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo
echo "soak: ${DURATION}s of wrk -t1 -c$CONNECTIONS against kairos-rs (1 worker), tracing=$TRACING"
grep -E 'Requests/sec|requests in|Non-2xx|Socket errors' "$TMP/wrk.txt" || true
echo "RSS after warm-up: $(mb "$START") MB; at the end: $(mb "$END") MB; peak: $(mb "$PEAK") MB"
echo "RSS samples (s, KiB): $(awk '{ printf "%s:%s ", $1, $2 }' "$SAMPLES")"
echo "$METRICS" | grep -E '^kairos_(inflight_requests|active_connections) ' || true
if grep -q 'Non-2xx' "$TMP/wrk.txt"; then
    die "non-2xx responses during the soak"
fi
if grep -q 'Socket errors' "$TMP/wrk.txt"; then
    die "socket errors (connect, read, write or timeout) during the soak"
fi
growth=$((END - START))
if ((growth > GROWTH_LIMIT_MB * 1024)); then
    die "RSS grew by $(mb "$growth") MB (limit $GROWTH_LIMIT_MB MB)"
fi
echo "RSS growth: $(mb "$growth") MB (limit $GROWTH_LIMIT_MB MB): ok"
