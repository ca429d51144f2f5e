#!/usr/bin/env bash
# gRPC and HTTP/2 through kairos-rs and through NGINX, side by side on loopback, alternating:
#
# - gRPC unary: benches/grpc_load.rs's echo server (h2c, one core) behind kairos-rs (route
#   "grpc": true, upstream "protocol": "h2c") and behind NGINX (`grpc_pass`), called by
#   grpc_load's client (tonic, h2c) for DURATION seconds per run;
# - h2load (nghttp2-client) GETs over h2c to each proxy, proxied to the same one-worker nginx
#   upstream kairos-rs's other benchmarks use, over HTTP/1.1 (route /h1/: NGINX `proxy_pass`
#   with keep-alive);
# - the same h2load GETs proxied over HTTP/2 to an h2c (prior knowledge) one-worker nginx
#   upstream on a second port (route /h2/: kairos-rs upstream "protocol": "h2c"; NGINX
#   `grpc_pass grpc://`, its only HTTP/2 upstream module, which relays plain GETs and their
#   body as well as gRPC calls; it sends one request per upstream connection at a time, kept
#   alive, where kairos-rs multiplexes streams on one connection per server).
#
# Prints each pair's ratio kairos/NGINX and the medians. Each proxy runs one worker on CPU 0;
# the load tools and the upstreams run on CPU 1. Loopback only; every process stops at exit.
#
# Environment: PAIRS (default 5), DURATION (s per run, default 6), CONCURRENCY (default 64
# callers), CONNECTIONS (default 4 HTTP/2 connections), KAIROS_BIN, KEEP_TMP=1. Not part of CI.

set -euo pipefail
export LC_ALL=C

PAIRS=${PAIRS:-5}
DURATION=${DURATION:-6}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

LOG_TAG=grpc
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
if ! command -v h2load >/dev/null 2>&1; then
    SUDO=()
    [[ $EUID -eq 0 ]] || SUDO=(sudo)
    log "installing nghttp2-client (h2load) with apt-get"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq nghttp2-client >/dev/null
fi
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-grpc.XXXXXX")
chmod 755 "$TMP"
ensure_kairos_bin
(($(nproc) >= 2)) || die "needs two CPUs (the proxy on one, the load and the upstreams on the other)"

log "cargo build --release --bench grpc_load"
(cd "$REPO" && cargo build --release --quiet --bench grpc_load)
TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
LOAD=$(ls -t "${TARGET_DIR:-$REPO/target}"/release/deps/grpc_load-* | grep -v '\.d$' | head -n1)
[[ -x $LOAD ]] || die "no grpc_load binary"

free_port GRPC_PORT
free_port UP_PORT
free_port H2UP_PORT
free_port GW_PORT
free_port NG_PORT

taskset -c 1 "$LOAD" server "127.0.0.1:$GRPC_PORT" >"$TMP/grpc-server.log" &
PIDS+=($!)
upstream_nginx_conf "$TMP/up" "$UP_PORT"
# The same answer over h2c (prior knowledge) on a second port, for kairos-rs's h2c upstream.
mkdir -p "$TMP/up2/tmp"
{
    [[ $EUID -eq 0 ]] && echo "user root;"
    echo "worker_processes 1; pid $TMP/up2/nginx.pid; error_log $TMP/up2/error.log warn;"
    echo "events { worker_connections 4096; }"
    echo "http { access_log off; client_body_temp_path $TMP/up2/tmp; keepalive_requests 1000000;"
    echo "  server { listen 127.0.0.1:$H2UP_PORT http2; location / { default_type text/plain; return 200 \"ok\"; } } }"
} >"$TMP/up2/nginx.conf"
taskset -c 1 "$NGINX" -e "$TMP/up2/error.log" -p "$TMP/up2" -c "$TMP/up2/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
taskset -c 1 "$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

cat >"$TMP/kairos.json" <<EOF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $GW_PORT, "workers": 1, "shutdown_timeout": "1s" },
  "upstreams": {
    "grpc": { "servers": [{ "url": "http://127.0.0.1:$GRPC_PORT" }], "protocol": "h2c" },
    "http1": { "servers": [{ "url": "http://127.0.0.1:$UP_PORT" }] },
    "h2c": { "servers": [{ "url": "http://127.0.0.1:$H2UP_PORT" }], "protocol": "h2c" }
  },
  "routes": [
    { "name": "echo", "path": "/bench.Echo/{m}", "methods": ["POST"], "upstream": "grpc", "grpc": true },
    { "name": "h1", "path": "/h1/{*rest}", "upstream": "http1" },
    { "name": "h2", "path": "/h2/{*rest}", "upstream": "h2c" }
  ],
  "logging": { "level": "warn", "access_log": false } }
EOF
"$KAIROS_BIN" config validate "$TMP/kairos.json" >/dev/null || die "the kairos config is invalid"

user=""
[[ $EUID -eq 0 ]] && user="user root;"
mkdir -p "$TMP/ng/tmp"
cat >"$TMP/ng/nginx.conf" <<EOF
$user
worker_processes 1;
pid $TMP/ng/nginx.pid;
error_log $TMP/ng/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/ng/tmp;
    keepalive_requests 1000000;
    http2_max_concurrent_streams 1024;
    upstream grpc_up { server 127.0.0.1:$GRPC_PORT; keepalive 64; }
    upstream h1_up { server 127.0.0.1:$UP_PORT; keepalive 64; }
    upstream h2c_up { server 127.0.0.1:$H2UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$NG_PORT http2;
        location /bench.Echo/ { grpc_pass grpc://grpc_up; }
        location /h1/ { proxy_pass http://h1_up; proxy_http_version 1.1; proxy_set_header Connection ""; }
        location /h2/ { grpc_pass grpc://h2c_up; }
    }
}
EOF

# start_proxy NAME: starts kairos-rs or NGINX pinned to CPU 0, waits for its port.
start_proxy() {
    local port
    if [[ $1 == kairos ]]; then
        taskset -c 0 "$KAIROS_BIN" --config "$TMP/kairos.json" 2>"$TMP/kairos.log" &
        port=$GW_PORT
    else
        taskset -c 0 "$NGINX" -e "$TMP/ng/error.log" -p "$TMP/ng" -c "$TMP/ng/nginx.conf" -g 'daemon off;' &
        port=$NG_PORT
    fi
    PROXY=$!
    PIDS+=("$PROXY")
    for _ in $(seq 100); do
        ss -Htln | grep -q ":$port " && return
        sleep 0.1
    done
    die "$1 did not listen on $port"
}
stop_proxy() {
    kill -TERM "$PROXY" 2>/dev/null || true
    wait "$PROXY" 2>/dev/null || true
    forget "$PROXY"
}

# grpc_run NAME PORT: prints calls/s p50 p99 failed.
grpc_run() {
    taskset -c 1 "$LOAD" client "http://127.0.0.1:$2" 1 "$CONCURRENCY" "$CONNECTIONS" >/dev/null
    taskset -c 1 "$LOAD" client "http://127.0.0.1:$2" "$DURATION" "$CONCURRENCY" "$CONNECTIONS"
}
# h2_run PORT PATH: prints h2load's requests/s (0 when any request failed or was not a 2xx).
h2_run() {
    taskset -c 1 h2load -D 1 -c "$CONNECTIONS" -m $((CONCURRENCY / CONNECTIONS)) "http://127.0.0.1:$1$2" >/dev/null
    taskset -c 1 h2load -D "$DURATION" -c "$CONNECTIONS" -m $((CONCURRENCY / CONNECTIONS)) "http://127.0.0.1:$1$2" |
        awk '/^finished in/ { gsub(",", "", $4); rps = $4 }
             /^requests:/ { bad += $10 + $12 + $14 }
             /^status codes:/ { bad += $5 + $7 + $9 }
             END { print (bad == 0 && rps != "") ? rps : 0 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "nan" }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: >"$TMP/grpc.ratios"
: >"$TMP/h2.ratios"
: >"$TMP/h2c.ratios"
: >"$TMP/h2c.kairos"
: >"$TMP/h2c.nginx"
printf '%-5s %-28s %-28s %-7s %-22s %-7s %-22s %s\n' pair "kairos grpc calls/s p50 p99" "nginx grpc calls/s p50 p99" ratio "h1 upstream k/n req/s" ratio "h2c upstream k/n req/s" ratio
for pair in $(seq "$PAIRS"); do
    start_proxy kairos
    read -r kg kp50 kp99 kfail < <(grpc_run kairos "$GW_PORT")
    kh=$(h2_run "$GW_PORT" /h1/x)
    kh2=$(h2_run "$GW_PORT" /h2/x)
    stop_proxy
    start_proxy nginx
    read -r ng np50 np99 nfail < <(grpc_run nginx "$NG_PORT")
    nh=$(h2_run "$NG_PORT" /h1/x)
    nh2=$(h2_run "$NG_PORT" /h2/x)
    stop_proxy
    ((kfail == 0 && nfail == 0)) || log "pair $pair: failed calls kairos $kfail, nginx $nfail"
    gr=$(ratio "$kg" "$ng")
    hr=$(ratio "$kh" "$nh")
    echo "$gr" >>"$TMP/grpc.ratios"
    h2r=$(ratio "$kh2" "$nh2")
    echo "$hr" >>"$TMP/h2.ratios"
    echo "$h2r" >>"$TMP/h2c.ratios"
    echo "$kh2" >>"$TMP/h2c.kairos"
    echo "$nh2" >>"$TMP/h2c.nginx"
    printf '%-5s %-28s %-28s %-7s %-22s %-7s %-22s %s\n' "$pair" "$kg ${kp50}µs ${kp99}µs" "$ng ${np50}µs ${np99}µs" "$gr" "$kh/$nh" "$hr" "$kh2/$nh2" "$h2r"
done
echo "median gRPC unary calls/s kairos/nginx: $(median <"$TMP/grpc.ratios")"
echo "median h2load req/s kairos/nginx (HTTP/1.1 upstream): $(median <"$TMP/h2.ratios")"
echo "median h2load req/s kairos/nginx (h2c upstream, NGINX grpc_pass): $(median <"$TMP/h2c.ratios") (medians $(median <"$TMP/h2c.kairos") / $(median <"$TMP/h2c.nginx") req/s)"
