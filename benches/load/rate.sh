#!/usr/bin/env bash
# CPU at a constant request rate: the share of one core a proxy uses to serve RATE requests a
# second (issue 25's "CPU at a constant 10k requests/s"), for kairos-rs and NGINX doing the
# same job. Unlike run.sh, the client does not push as hard as it can: oha sends at a fixed
# rate (`--qps`) over CONNECTIONS keep-alive connections, as steady traffic arrives, and the
# figure is the proxy's CPU time (user + system, /proc/PID/stat) over the run's wall time.
#
#   benches/load/rate.sh                      # RATE=10000, DURATION=10 s, ROUNDS=3
#   RATE=5000 CONNECTIONS=100 benches/load/rate.sh
#
# Environment: RATE (requests/s, default 10000), DURATION (s per run, default 10), ROUNDS
# (default 3; the two proxies alternate), CONNECTIONS (default 50), KAIROS_BIN, KEEP_TMP=1,
# OHA (the oha binary; default: `oha` on PATH, else `cargo install oha --locked` into
# $CARGO_TARGET_DIR/bench-tools or target/bench-tools). The proxy under test runs on CPU 0,
# oha and the upstream nginx on CPU 1. Not part of CI: a load test on loopback that stops by
# itself.
set -euo pipefail
export LC_ALL=C

RATE=${RATE:-10000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

LOG_TAG=rate
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-rate.XXXXXX")
chmod 755 "$TMP"
ensure_kairos_bin
(($(nproc) >= 2)) || die "needs two CPUs (the proxy on one, oha and the upstream on the other)"

if [[ -z ${OHA:-} ]]; then
    OHA=$(command -v oha || true)
    if [[ -z $OHA ]]; then
        tools=${CARGO_TARGET_DIR:-$REPO/target}/bench-tools
        if [[ ! -x $tools/bin/oha ]]; then
            log "cargo install oha --locked (into $tools)"
            cargo install oha --locked --quiet --root "$tools"
        fi
        OHA=$tools/bin/oha
    fi
fi
[[ -x $OHA ]] || die "no oha binary at $OHA"

free_port UP_PORT
free_port GW_PORT
free_port NGX_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT"
taskset -c 1 "$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

user=""
[[ $EUID -eq 0 ]] && user="user root;"
mkdir -p "$TMP/proxy/tmp"
cat >"$TMP/proxy/nginx.conf" <<EOF
$user
worker_processes 1;
pid $TMP/proxy/nginx.pid;
error_log $TMP/proxy/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/proxy/tmp;
    keepalive_requests 1000000;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 64; keepalive_requests 1000000; }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
cat >"$TMP/kairos.json" <<EOF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $GW_PORT, "workers": 1, "shutdown_timeout": "1s" },
  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:$UP_PORT" }] } },
  "routes": [{ "name": "hit", "path": "/api/items/{id}", "upstream": "up" }],
  "logging": { "level": "warn", "access_log": false } }
EOF
"$KAIROS_BIN" config validate "$TMP/kairos.json" >/dev/null || die "the kairos config is invalid"

HZ=$(getconf CLK_TCK)
# run NAME: starts the proxy, sends RATE req/s for DURATION s, sets CPU (% of one core), RPS
# (achieved), P99 (ms) and OK (2xx responses).
run() {
    local name=$1 port pid t1 t2 out url
    case $name in
        kairos)
            port=$GW_PORT
            taskset -c 0 "$KAIROS_BIN" --config "$TMP/kairos.json" >"$TMP/kairos.log" 2>&1 &
            ;;
        nginx)
            port=$NGX_PORT
            taskset -c 0 "$NGINX" -e "$TMP/proxy/error.log" -p "$TMP/proxy" -c "$TMP/proxy/nginx.conf" -g 'daemon off;' &
            ;;
    esac
    pid=$!
    PIDS+=("$pid")
    url="http://127.0.0.1:$port/api/items/42"
    for _ in $(seq 100); do
        curl -fsS "$url" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "$url" >/dev/null || die "$name did not answer (see $TMP)"
    # The busy process: nginx's worker, not its master.
    local busy=$pid
    if [[ $name == nginx ]]; then
        busy=$(pgrep -P "$pid" | head -1)
    fi
    # A short warm-up at the same rate, then the measured run.
    taskset -c 1 "$OHA" --no-tui -q "$RATE" -c "$CONNECTIONS" -z 2s "$url" >/dev/null
    t1=$(cpu_ticks "$busy")
    local s1 s2
    s1=$(date +%s.%N)
    out=$(taskset -c 1 "$OHA" --no-tui -q "$RATE" -c "$CONNECTIONS" -z "${DURATION}s" --output-format json "$url")
    s2=$(date +%s.%N)
    t2=$(cpu_ticks "$busy")
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    forget "$pid"
    CPU=$(awk -v t=$((t2 - t1)) -v hz="$HZ" -v a="$s1" -v b="$s2" 'BEGIN { printf "%.1f", 100 * t / hz / (b - a) }')
    RPS=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(round(d["summary"]["requestsPerSec"]))' <<<"$out")
    P99=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.3f" % (1000 * d["latencyPercentiles"]["p99"]))' <<<"$out")
    OK=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(v for k,v in d["statusCodeDistribution"].items() if k.startswith("2")))' <<<"$out")
}

log "$ROUNDS round(s): $RATE req/s for ${DURATION}s over $CONNECTIONS connections (oha), proxies on CPU 0"
printf '%-6s %-7s %12s %10s %10s %10s\n' round proxy "req/s" "cpu %" "p99 ms" "2xx"
declare -A CPUS=()
for r in $(seq "$ROUNDS"); do
    order=(kairos nginx)
    ((r % 2)) || order=(nginx kairos)
    for p in "${order[@]}"; do
        run "$p"
        printf '%-6s %-7s %12s %10s %10s %10s\n' "$r" "$p" "$RPS" "$CPU" "$P99" "$OK"
        CPUS[$p]+="$CPU "
    done
done
median() { printf '%s\n' $1 | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
mk=$(median "${CPUS[kairos]}")
mn=$(median "${CPUS[nginx]}")
echo "median CPU at $RATE req/s: kairos-rs $mk% of one core, nginx $mn% (kairos/nginx $(awk -v a="$mk" -v b="$mn" 'BEGIN { printf "%.2f", a / b }'))"
