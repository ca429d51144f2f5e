#!/usr/bin/env bash
# A/B of two kairos-rs configs that differ in one setting, for effects of a few percent that a
# run of every target (run.sh) cannot resolve on a noisy machine: the two gateways run one
# after the other, PAIRS times, each pair back to back; every run reports req/s and the proxy's
# CPU time per request (user + system, from /proc/PID/stat), which does not depend on how
# busy the rest of the machine was as much as req/s does.
#
#   benches/load/ab.sh                                   # tracing off vs sampling 0.1
#   B_EXTRA=', "tracing": {"sampling_rate": 1.0, "endpoint": "http://127.0.0.1:SINK"}' benches/load/ab.sh
#   B_STREAM=1 benches/load/ab.sh                        # the same config; B with a client
#                                                        # reading /_kairos/events (a dashboard)
#
# Environment: A_EXTRA, B_EXTRA (top-level JSON members appended to the config; SINK is
# replaced by the port of an OTLP sink that answers 200), PAIRS (default 5), DURATION (s per
# run, default 6), WARMUP (default 2), CONNECTIONS (default 50), KAIROS_BIN, KEEP_TMP=1.
# The gateway runs on CPU 0, wrk and the upstream nginx on CPU 1. Not part of CI.

set -euo pipefail
export LC_ALL=C

B_STREAM=${B_STREAM:-0}
STREAM_TOKEN=ab-stream-admin-token-0123456789
A_EXTRA=${A_EXTRA:-}
if ((B_STREAM)); then
    # Both gateways have an admin token; B's run has a live-stream client connected.
    B_EXTRA=${B_EXTRA:-}
    A_EXTRA+=", \"admin\": { \"token\": \"$STREAM_TOKEN\" }"
    B_EXTRA+=", \"admin\": { \"token\": \"$STREAM_TOKEN\" }"
else
    B_EXTRA=${B_EXTRA:-', "tracing": {"sampling_rate": 0.1, "endpoint": "http://127.0.0.1:SINK"}'}
fi
PAIRS=${PAIRS:-5}
((PAIRS >= 1)) || { echo "PAIRS must be at least 1" >&2; exit 1; }
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

LOG_TAG=ab
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-ab.XXXXXX")
chmod 755 "$TMP"
ensure_kairos_bin
(($(nproc) >= 2)) || die "needs two CPUs (the gateway on one, wrk and the upstream on the other)"

free_port UP_PORT
free_port SINK_PORT
free_port GW_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT" "$SINK_PORT"
taskset -c 1 "$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

for v in A B; do
    extra=A_EXTRA
    [[ $v == B ]] && extra=B_EXTRA
    cat >"$TMP/$v.json" <<EOF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $GW_PORT, "workers": 1, "shutdown_timeout": "1s" },
  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:$UP_PORT" }] } },
  "routes": [{ "name": "hit", "path": "/api/items/{id}", "upstream": "up" }],
  "logging": { "level": "warn", "access_log": false } ${!extra//SINK/$SINK_PORT} }
EOF
    "$KAIROS_BIN" config validate "$TMP/$v.json" >/dev/null || die "config $v is invalid"
done

URL="http://127.0.0.1:$GW_PORT/api/items/42"
HZ=$(getconf CLK_TCK)
# run VARIANT: sets RPS and CPU_US (the proxy's CPU time per request, µs). Runs in this shell
# (not in $(...)), so the gateway's pid is in PIDS for the cleanup on any exit.
run() {
    local pid u1 s1 u2 s2 out ok=0
    taskset -c 0 "$KAIROS_BIN" --config "$TMP/$1.json" >"$TMP/$1.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 100); do
        if curl -fsS "$URL" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    ((ok)) || die "gateway $1 did not answer 2xx (see $TMP/$1.log; KEEP_TMP=1 keeps it)"
    local stream=
    if ((B_STREAM)) && [[ $1 == B ]]; then
        taskset -c 1 curl -sN -H "Authorization: Bearer $STREAM_TOKEN" \
            "http://127.0.0.1:$GW_PORT/_kairos/events" >"$TMP/stream.txt" &
        stream=$!
        PIDS+=("$stream")
    fi
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$URL" >/dev/null
    read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "$URL")
    read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$pid/stat")
    if [[ -n $stream ]]; then
        kill "$stream" 2>/dev/null || true
        wait "$stream" 2>/dev/null || true
        forget "$stream"
        grep -q '^event: stats' "$TMP/stream.txt" || die "the stream client got no stats event"
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    [[ $out != *"Non-2xx"* ]] || die "gateway $1 answered non-2xx under load: $out"
    RPS=$(awk '/Requests\/sec/ { printf "%.0f", $2 }' <<<"$out")
    [[ -n $RPS && $RPS -gt 0 ]] || die "no throughput from wrk: $out"
    CPU_US=$(awk -v r="$RPS" -v t=$((u2 - u1 + s2 - s1)) -v d="$DURATION" -v hz="$HZ" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / (r * d) }')
}

log "A: ${A_EXTRA:-(as is)}"
log "B: $B_EXTRA"
log "$PAIRS pairs of ${DURATION}s runs, wrk -t1 -c$CONNECTIONS"
printf '%-5s %10s %10s %12s %12s %8s %8s\n' pair "A req/s" "B req/s" "A cpu µs/req" "B cpu µs/req" "B/A rps" "A/B cpu"
RPS_RATIOS=()
CPU_RATIOS=()
for i in $(seq "$PAIRS"); do
    run A
    ra=$RPS ca=$CPU_US
    run B
    rb=$RPS cb=$CPU_US
    r=$(awk -v a="$ra" -v b="$rb" 'BEGIN { printf "%.3f", b / a }')
    c=$(awk -v a="$ca" -v b="$cb" 'BEGIN { printf "%.3f", a / b }')
    printf '%-5s %10s %10s %12s %12s %8s %8s\n' "$i" "$ra" "$rb" "$ca" "$cb" "$r" "$c"
    RPS_RATIOS+=("$r")
    CPU_RATIOS+=("$c")
done
# median and mean of a list of numbers (one pair hit by a noisy neighbour moves the mean)
stats() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1; s += $1 } END {
    m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
    printf "median %.3f, mean %.3f", m, s / NR }'; }
echo "B/A req/s:                                   $(stats "${RPS_RATIOS[@]}")"
echo "A/B CPU per request (B's throughput per CPU): $(stats "${CPU_RATIOS[@]}")"
