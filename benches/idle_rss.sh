#!/usr/bin/env bash
# Idle memory: the resident set (VmRSS, and its anonymous part RssAnon) of a kairos-rs that
# started, answered one proxied request and has been idle for SETTLE s, for each route count in
# ROUTES and each worker count in WORKERS; then again after RELOADS reloads of the same file
# (POST /_kairos/config/reload). The routes are those of benches/load/run.sh: the hit route
# plus N-1 generated routes of three shapes (static, parameter, catch-all), all distinct.
#
#   benches/idle_rss.sh                           # 10 and 10,000 routes, 1 worker and the default
#   ROUTES="10000" WORKERS="1" benches/idle_rss.sh
#
# Environment: ROUTES (default "10 10000"), WORKERS (default "1 default": "default" leaves
# server.workers unset, one per CPU), SETTLE (s, default 3), RELOADS (default 3),
# KAIROS_BIN (default: cargo build --release), KEEP_TMP=1. Not part of CI.

set -euo pipefail

ROUTES=${ROUTES:-10 10000}
WORKERS=${WORKERS:-1 default}
SETTLE=${SETTLE:-3}
RELOADS=${RELOADS:-3}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOKEN=idle-rss-bench-token-0123456789
HIT_PATH=/api/items/42

LOG_TAG=idle_rss
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-idle-rss.XXXXXX")
chmod 755 "$TMP"

ensure_kairos_bin

free_port UP_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT"
"$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

write_config() { # file, port, routes, workers
    local workers=""
    [[ $4 != default ]] && workers=", \"workers\": $4"
    {
        printf '{ "version": 1,\n'
        printf '  "server": { "host": "127.0.0.1", "port": %s%s, "shutdown_timeout": "1s" },\n' "$2" "$workers"
        printf '  "admin": { "token": "%s", "watch_config": false },\n' "$TOKEN"
        printf '  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:%s" }] } },\n' "$UP_PORT"
        printf '  "logging": { "level": "warn", "access_log": false },\n'
        printf '  "routes": [\n'
        printf '    { "name": "hit", "path": "/api/items/{id}", "upstream": "up" }%s\n' "$([[ $3 -gt 1 ]] && echo ,)"
        awk -v n="$3" 'BEGIN {
            for (i = 0; i < n - 1; i++) {
                k = i % 3
                if (k == 0) p = sprintf("/static%d/health", i)
                else if (k == 1) p = sprintf("/svc%d/items/{id}", i)
                else p = sprintf("/files%d/{*rest}", i)
                printf "    { \"name\": \"r%d\", \"path\": \"%s\", \"upstream\": \"up\" }%s\n", i, p, (i < n - 2 ? "," : "")
            }
        }'
        printf '  ]\n}\n'
    } >"$1"
}

status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

printf '%-8s %-8s %-8s %12s %12s %14s %14s\n' routes workers threads "RSS MB" "anon MB" "RSS reload MB" "anon reload MB"
for n in $ROUTES; do
    for w in $WORKERS; do
        free_port GW_PORT
        conf=$TMP/kairos-$n-$w.json
        write_config "$conf" "$GW_PORT" "$n" "$w"
        "$KAIROS_BIN" --config "$conf" >"$TMP/kairos-$n-$w.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        ready=0
        for _ in $(seq 600); do
            curl -fsS "http://127.0.0.1:$GW_PORT$HIT_PATH" >/dev/null 2>&1 && ready=1 && break
            kill -0 "$pid" 2>/dev/null || die "kairos-rs exited: $(tail -5 "$TMP/kairos-$n-$w.log")"
            sleep 0.1
        done
        ((ready)) || die "kairos-rs not ready after 60 s: $(tail -5 "$TMP/kairos-$n-$w.log")"
        sleep "$SETTLE"
        rss=$(status_kb "$pid" VmRSS)
        anon=$(status_kb "$pid" RssAnon)
        threads=$(status_kb "$pid" Threads)
        for ((i = 1; i <= RELOADS; i++)); do
            out=$(curl -sS -X POST -H "Authorization: Bearer $TOKEN" \
                "http://127.0.0.1:$GW_PORT/_kairos/config/reload")
            [[ $out == *'"duration_ms"'* || $out == *unchanged* ]] || die "reload failed: $out"
        done
        curl -fsS "http://127.0.0.1:$GW_PORT$HIT_PATH" >/dev/null || die "no answer after the reloads"
        sleep "$SETTLE"
        rss_r=$(status_kb "$pid" VmRSS)
        anon_r=$(status_kb "$pid" RssAnon)
        printf '%-8s %-8s %-8s %12s %12s %14s %14s\n' "$n" "$w" "$threads" "$(mb "$rss")" "$(mb "$anon")" "$(mb "$rss_r")" "$(mb "$anon_r")"
        kill -TERM "$pid"
        wait "$pid" 2>/dev/null || true
        forget "$pid"
    done
done
