#!/usr/bin/env bash
# Load test: kairos-rs vs nginx as a reverse proxy, on loopback, in front of the same upstream.
#
#   benches/load/run.sh            # DURATION=10 s per run, ROUNDS=3
#   benches/load/run.sh --quick    # smoke run: DURATION=2, ROUNDS=1, WARMUP=1
#   DURATION=30 ROUNDS=5 benches/load/run.sh
#
# Environment (all optional):
#   DURATION     seconds per measured wrk run (default 10; 2 with --quick)
#   ROUNDS       measured rounds; each round runs every target once (default 3; 1 with --quick)
#   WARMUP       seconds of wrk warm-up before each measured run (default 2; 1 with --quick)
#   CONNECTIONS  wrk connections (default 50); wrk always runs with one thread (-t1)
#   PIN          1 (default) pins processes to CPUs as described below; 0 disables pinning
#   PROXY_CPU    CPU for the proxy under test (default 0)
#   AUX_CPU      CPU for wrk and the upstream nginx (default 1)
#   KAIROS_BIN   use this kairos-rs binary instead of building one
#   KAIROS_BIN_B a second kairos-rs binary, run as target `kairos-b` (10 routes) for an A/B
#                comparison in the same rounds, e.g. a build without mimalloc
#   KEEP_TMP     1 keeps the temp dir (configs, logs, raw wrk output) for inspection
#   TRACING      1 (default) also runs the tracing variants below; 0 skips them
#   AUTH         1 (default) also runs the JWT variants below; 0 skips them
#   RATELIMIT    1 (default) also runs the rate-limit variants below; 0 skips them
#   CACHE        1 (default) also runs the response-cache variants below; 0 skips them
#   CHURN_MAX    caching.max_size of kairos-cache-churn (default 64MB)
#   TENANCY      1 (default) also runs the tenancy variants below; 0 skips them
#   CHAIN        1 (default) also runs kairos-chain below; 0 skips it
#
# Targets (all on 127.0.0.1, free ports picked at start):
#   upstream     nginx, 1 worker, `return 200 "ok"`           (what every proxy forwards to)
#   nginx        nginx reverse proxy, 1 worker, keepalive 64 to the upstream
#   kairos       kairos-rs, workers 1, 10 routes (the hit route among them)
#   kairos-10k   kairos-rs, workers 1, 10,000 routes (the same hit route among them)
#   kairos-t0    kairos with 10 routes and OpenTelemetry tracing at sampling_rate 0 (ids are
#   kairos-t0.1  still propagated), 0.1 and 1.0, exporting OTLP/HTTP to a sink (a second
#   kairos-t1    server of the upstream nginx that answers 200). Metrics are always on.
#   kairos-hs256 kairos with 10 routes and `"auth": "jwt"` on the hit route, HS256 (secret) or
#   kairos-rs256 RS256 (a 2048-bit key made by openssl); wrk sends one valid bearer token, as a
#                client reusing its token does. kairos-*-noauth send the same token to the
#                plain kairos target (no auth on its route): the ratio to these isolates the
#                cost of checking the token from the cost of carrying the header.
#   kairos-rl-memory  kairos with 10 routes and a per-IP limit on the hit route that never
#   kairos-rl-redis   binds (1,000,000 rps): every request pays for a decision, none is refused.
#                The memory backend, or the redis backend against a redis-server the script
#                starts (Debian's, on AUX_CPU, nothing persisted). Compare with `kairos`.
#   kairos-cache kairos with 10 routes and the response cache (memory) on the hit route: every
#                measured request is a HIT (the answer is stored by the readiness check).
#                Compare with `kairos` (the same route uncached) and with:
#   nginx-cache  nginx reverse proxy with proxy_cache on (proxy_cache_valid 200 5m,
#                proxy_cache_lock): every measured request is a HIT served from its cache.
#   kairos-cache-churn  kairos with the response cache (memory, max_size CHURN_MAX) where wrk
#                asks for a new key on every request (a wrk Lua script), each a miss stored
#                with a 4 KiB body from the upstream: evictions all along. Its RSS under load is
#                the number to read (against max_size), not its req/s.
#   kairos-tenant-file   kairos with 10 routes, the hit route a route of tenant `acme` found
#   kairos-tenant-redis  by `X-Tenant-Id` (wrk sends it), with a monthly quota that never
#                binds: every request is identified, routed in the tenant's table, counted
#                against the quota (file store: redb in the temp dir; or the redis store, one
#                round trip per request) and recorded in the tenant metrics. kairos-tenant-none
#                sends the same header to the plain kairos target: the baseline.
#   kairos-chain kairos with 10 routes and the full chain on the hit route, as a user runs the
#                gateway: `"auth": "jwt"` (HS256; wrk sends one valid token), a per-IP limit in
#                memory that never binds, metrics, tracing at sampling_rate 0.1 to a collector
#                that is down (a socket bound by the script that never listens: every export
#                is refused and its spans dropped), and the access log on at level info,
#                written to stderr redirected to a file. Compare with `kairos` (the issue's
#                target: >= 0.85x); the report also gives both CPU times per request.
#
# CPU pinning (PIN=1, needs >= 2 CPUs): the proxy under test (nginx worker, or kairos-rs with
# all its threads) runs alone on PROXY_CPU; wrk and the upstream nginx share AUX_CPU. A proxy
# does about twice the socket work of the upstream (it is both a server and a client), so with
# this split the proxy is the bottleneck and the numbers compare the proxies, not the client.
# Without pinning, wrk, the upstream and the proxy would fight over both cores and the
# scheduler's placement would add noise between runs. The script prints the proxy's CPU use
# during each run: near 100% means the proxy was saturated (the intended case); clearly below
# means something else (wrk or the upstream on AUX_CPU) limited the run.

set -euo pipefail

QUICK=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    DURATION=${DURATION:-2}
    ROUNDS=${ROUNDS:-1}
    WARMUP=${WARMUP:-1}
fi
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-50}
PIN=${PIN:-1}
PROXY_CPU=${PROXY_CPU:-0}
AUX_CPU=${AUX_CPU:-1}
KEEP_TMP=${KEEP_TMP:-0}
TRACING=${TRACING:-1}
AUTH=${AUTH:-1}
RATELIMIT=${RATELIMIT:-1}
CACHE=${CACHE:-1}
CHURN_MAX=${CHURN_MAX:-64MB}
TENANCY=${TENANCY:-1}
CHAIN=${CHAIN:-1}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HIT_PATH=/api/items/42          # the request every wrk run sends
HIT_ROUTE=/api/items/{id}       # the kairos route that matches it

LOG_TAG=load
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"

if [[ $PIN == 1 ]] && command -v taskset >/dev/null 2>&1 && (($(nproc) >= 2)); then
    ON_PROXY=(taskset -c "$PROXY_CPU")
    ON_AUX=(taskset -c "$AUX_CPU")
    PIN_DESC="proxy on CPU $PROXY_CPU; wrk + upstream on CPU $AUX_CPU"
else
    ON_PROXY=()
    ON_AUX=()
    PIN_DESC="none"
fi

# ---------------------------------------------------------------- build kairos-rs
if [[ -n ${KAIROS_BIN:-} ]]; then
    [[ -x $KAIROS_BIN ]] || die "KAIROS_BIN=$KAIROS_BIN is not executable"
else
    log "cargo build --release (fat LTO: this can take several minutes)"
    (cd "$REPO" && cargo build --release --quiet)
    # cargo metadata reports the target dir cargo really uses (CARGO_TARGET_DIR, .cargo/config).
    target_dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    KAIROS_BIN=${target_dir:-${CARGO_TARGET_DIR:-$REPO/target}}/release/kairos-rs
    [[ -x $KAIROS_BIN ]] || die "built binary not found at $KAIROS_BIN"
fi
log "kairos binary: $KAIROS_BIN"

TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-load.XXXXXX")
chmod 755 "$TMP"

# ---------------------------------------------------------------- free ports
free_port UP_PORT
free_port NGX_PORT
free_port K10_PORT
free_port K10K_PORT
free_port KB_PORT
free_port SINK_PORT
declare -A TRACE_PORT
for t in kairos-t0 kairos-t0.1 kairos-t1; do
    free_port port
    TRACE_PORT[$t]=$port
done
declare -A TRACE_RATE=([kairos-t0]=0 [kairos-t0.1]=0.1 [kairos-t1]=1.0)
declare -A AUTH_PORT
for t in kairos-hs256 kairos-rs256; do
    free_port port
    AUTH_PORT[$t]=$port
done
declare -A RL_PORT
for t in kairos-rl-memory kairos-rl-redis; do
    free_port port
    RL_PORT[$t]=$port
done
free_port REDIS_PORT
free_port NGXC_PORT
free_port KC_PORT
free_port KCH_PORT
free_port CHAIN_PORT
declare -A TEN_PORT
for t in kairos-tenant-file kairos-tenant-redis; do
    free_port port
    TEN_PORT[$t]=$port
done

# ---------------------------------------------------------------- configs
# nginx as root would switch its worker to "nobody", which cannot write into our temp dir.
NGX_USER=""
[[ $EUID -eq 0 ]] && NGX_USER="user root;"

nginx_conf() { # name, http-block body
    local dir=$TMP/$1
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
$NGX_USER
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/client;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
$2
}
EOF
}

# The churn target's upstream body: 4 KiB (too long for an nginx `return` string).
mkdir -p "$TMP/upstream"
head -c 4096 /dev/zero | tr '\0' 'c' >"$TMP/upstream/body4k"
nginx_conf upstream "
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { default_type text/plain; return 200 \"ok\"; }
        location /churn/ { default_type text/plain; root $TMP/upstream; try_files /body4k =404; }
    }
    server {
        listen 127.0.0.1:$SINK_PORT;
        location / { return 200; }
    }
    "

nginx_conf nginx-proxy "
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

nginx_conf nginx-cache "
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    proxy_cache_path $TMP/nginx-cache/cache levels=1:2 keys_zone=kairos_bench:10m max_size=256m
                     inactive=10m use_temp_path=off;
    server {
        listen 127.0.0.1:$NGXC_PORT;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_cache kairos_bench;
            proxy_cache_valid 200 5m;
            proxy_cache_lock on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }"

# kairos configs: the hit route plus N-1 generated routes of three shapes (static, parameter,
# catch-all), all distinct, so the only difference between the two instances is the count.
kairos_conf() { # file, port, route count[, tracing sampling rate[, jwt_validation JSON[, rate_limiting JSON[, caching JSON[, hit route rewrite[, quota_store JSON[, collector port[, access log]]]]]]]]
    local file=$1 port=$2 n=$3 rate=${4:-} jwt=${5:-} rl=${6:-} caching=${7:-} rewrite=${8:-} ten=${9:-}
    local collector=${10:-$SINK_PORT} access=${11:-} hit_auth="" skip_hit=0
    [[ -n $ten ]] && skip_hit=1
    [[ -n $jwt ]] && hit_auth=', "auth": "jwt"'
    [[ -n $rl ]] && hit_auth+=', "rate_limit": { "per_ip": { "rps": 1000000, "burst": 1000000 } }'
    [[ -n $caching ]] && hit_auth+=', "cache": {}'
    [[ -n $rewrite ]] && hit_auth+=", \"rewrite\": \"$rewrite\""
    {
        printf '{\n  "version": 1,\n'
        if [[ -n $caching ]]; then
            # Public metrics: the report reads the cache's gauges at the end.
            printf '  "caching": %s,\n  "admin": { "public_metrics": true },\n' "$caching"
        fi
        if [[ -n $rl ]]; then
            printf '  "rate_limiting": %s,\n' "$rl"
        fi
        if [[ -n $rate ]]; then
            printf '  "tracing": { "endpoint": "http://127.0.0.1:%s", "sampling_rate": %s },\n' "$collector" "$rate"
        fi
        if [[ -n $jwt ]]; then
            printf '  "jwt_validation": %s,\n' "$jwt"
        fi
        printf '  "server": { "host": "127.0.0.1", "port": %s, "workers": 1, "shutdown_timeout": "1s" },\n' "$port"
        printf '  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:%s" }] } },\n' "$UP_PORT"
        if [[ -n $access ]]; then
            # As a user runs it: level info writes the access log (and the audit lines).
            printf '  "logging": { "level": "info", "access_log": true },\n'
        else
            printf '  "logging": { "level": "warn", "access_log": false },\n'
        fi
        printf '  "routes": [\n'
        awk -v n="$n" -v hit="$HIT_ROUTE" -v auth="$hit_auth" -v skip="$skip_hit" 'BEGIN {
            half = int((n - 1) / 2)
            for (i = 0; i < n - 1; i++) {
                if (i == half && !skip) printf "    { \"name\": \"hit\", \"path\": \"%s\", \"upstream\": \"up\"%s },\n", hit, auth
                k = i % 3
                if (k == 0) p = sprintf("/static%d/health", i)
                else if (k == 1) p = sprintf("/svc%d/items/{id}", i)
                else p = sprintf("/files%d/{*rest}", i)
                printf "    { \"name\": \"r%d\", \"path\": \"%s\", \"upstream\": \"up\" }%s\n", i, p, (i < n - 2 ? "," : "")
            }
            if (n == 1) printf "    { \"name\": \"hit\", \"path\": \"%s\", \"upstream\": \"up\"%s }\n", hit, auth
        }'
        printf '  ]'
        if [[ -n $ten ]]; then
            printf ',\n  "tenancy": { "identify_by": ["header"], "quota_store": %s },\n' "$ten"
            printf '  "tenants": { "acme": { "routes": [{ "name": "hit", "path": "%s", "upstream": "up" }],\n' "$HIT_ROUTE"
            printf '    "quotas": { "monthly_requests": 1000000000000 } } }'
        fi
        printf '\n}\n'
    } >"$file"
}
kairos_conf "$TMP/kairos-10.json" "$K10_PORT" 10
kairos_conf "$TMP/kairos-10k.json" "$K10K_PORT" 10000
"$KAIROS_BIN" config validate "$TMP/kairos-10.json" >&2 || die "kairos config (10 routes) rejected"
"$KAIROS_BIN" config validate "$TMP/kairos-10k.json" >&2 || die "kairos config (10k routes) rejected"

# ---------------------------------------------------------------- start servers
STARTED=""
start_nginx() { # name, cpu prefix...; sets STARTED to the master's pid
    local name=$1
    shift
    "$@" "$NGINX" -e "$TMP/$name/error.log" -p "$TMP/$name" -c "$TMP/$name/nginx.conf" \
        -g 'daemon off;' >>"$TMP/$name/stdout.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

wait_ready() { # name, url, pid[, request header]
    local name=$1 url=$2 pid=$3 hdr=${4:-} body
    local extra=()
    [[ -n $hdr ]] && extra=(-H "$hdr")
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || die "$name exited during startup (see logs below)
$(tail -n 20 "$TMP"/"$name"*.log "$TMP/$name"/*.log 2>/dev/null || true)"
        if body=$(curl -fsS --max-time 2 "${extra[@]}" "$url" 2>/dev/null); then
            [[ $body == ok ]] || die "$name answered \"$body\" instead of \"ok\" on $url"
            return
        fi
        sleep 0.1
    done
    die "$name not ready after 30 s on $url"
}

start_nginx upstream "${ON_AUX[@]}"
UP_PID=$STARTED
wait_ready upstream "http://127.0.0.1:$UP_PORT$HIT_PATH" "$UP_PID"
start_nginx nginx-proxy "${ON_PROXY[@]}"
NGX_PID=$STARTED
wait_ready nginx-proxy "http://127.0.0.1:$NGX_PORT$HIT_PATH" "$NGX_PID"
# The nginx master only supervises; the worker (its only child) does the proxying.
NGX_WORKER=""
for _ in $(seq 50); do
    NGX_WORKER=$(pgrep -P "$NGX_PID" | head -n1 || true)
    [[ -n $NGX_WORKER ]] && break
    sleep 0.1
done
[[ -n $NGX_WORKER ]] || die "nginx proxy worker not found"

"${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos-10.json" >"$TMP/kairos-10.log" 2>&1 &
K10_PID=$!
PIDS+=("$K10_PID")
"${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos-10k.json" >"$TMP/kairos-10k.log" 2>&1 &
K10K_PID=$!
PIDS+=("$K10K_PID")
# kairos-10 is checked first so that it reaches idle before its RSS is read.
wait_ready kairos-10 "http://127.0.0.1:$K10_PORT$HIT_PATH" "$K10_PID"
wait_ready kairos-10k "http://127.0.0.1:$K10K_PORT$HIT_PATH" "$K10K_PID"
TARGETS=(nginx kairos kairos-10k)
if [[ -n ${KAIROS_BIN_B:-} ]]; then
    kairos_conf "$TMP/kairos-b.json" "$KB_PORT" 10
    "${ON_PROXY[@]}" "$KAIROS_BIN_B" --config "$TMP/kairos-b.json" >"$TMP/kairos-b.log" 2>&1 &
    KB_PID=$!
    PIDS+=("$KB_PID")
    wait_ready kairos-b "http://127.0.0.1:$KB_PORT$HIT_PATH" "$KB_PID"
    TARGETS+=(kairos-b)
fi
declare -A TRACE_PID
if [[ $TRACING == 1 ]]; then
    for t in kairos-t0 kairos-t0.1 kairos-t1; do
        kairos_conf "$TMP/$t.json" "${TRACE_PORT[$t]}" 10 "${TRACE_RATE[$t]}"
        "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/$t.json" >"$TMP/$t.log" 2>&1 &
        TRACE_PID[$t]=$!
        PIDS+=("${TRACE_PID[$t]}")
        wait_ready "$t" "http://127.0.0.1:${TRACE_PORT[$t]}$HIT_PATH" "${TRACE_PID[$t]}"
        TARGETS+=("$t")
    done
fi
declare -A AUTH_PID HDR_OF
if [[ $AUTH == 1 || $CHAIN == 1 ]]; then
    command -v openssl >/dev/null || die "openssl is needed for the JWT variants and the chain (AUTH=0 CHAIN=0 skip them)"
    b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
    jwt_token() { # alg, signing command...
        local alg=$1 h p
        shift
        h=$(printf '{"alg":"%s","typ":"JWT"}' "$alg" | b64url)
        p=$(printf '{"sub":"bench","exp":%s}' "$(($(date +%s) + 86400))" | b64url)
        printf '%s.%s.%s' "$h" "$p" "$(printf '%s.%s' "$h" "$p" | "$@" | b64url)"
    }
    HS_SECRET=$(openssl rand -hex 32)
    HS_TOKEN=$(jwt_token HS256 openssl dgst -sha256 -hmac "$HS_SECRET" -binary)
fi
if [[ $AUTH == 1 ]]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rs.pem" 2>/dev/null
    RS_PUB=$(openssl pkey -in "$TMP/rs.pem" -pubout | awk '{ printf "%s\\n", $0 }')
    declare -A JWT_CONF=(
        [kairos-hs256]="{ \"secret\": \"$HS_SECRET\", \"algorithm\": \"HS256\" }"
        [kairos-rs256]="{ \"public_key\": \"$RS_PUB\", \"algorithm\": \"RS256\" }"
    )
    HDR_OF[kairos-hs256]="Authorization: Bearer $HS_TOKEN"
    HDR_OF[kairos-rs256]="Authorization: Bearer $(jwt_token RS256 openssl dgst -sha256 -sign "$TMP/rs.pem" -binary)"
    for t in kairos-hs256 kairos-rs256; do
        kairos_conf "$TMP/$t.json" "${AUTH_PORT[$t]}" 10 "" "${JWT_CONF[$t]}"
        "$KAIROS_BIN" config validate "$TMP/$t.json" >&2 || die "kairos config ($t) rejected"
        "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/$t.json" >"$TMP/$t.log" 2>&1 &
        AUTH_PID[$t]=$!
        PIDS+=("${AUTH_PID[$t]}")
        wait_ready "$t" "http://127.0.0.1:${AUTH_PORT[$t]}$HIT_PATH" "${AUTH_PID[$t]}" "${HDR_OF[$t]}"
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${AUTH_PORT[$t]}$HIT_PATH")
        [[ $code == 401 ]] || die "$t answered $code without a token, not 401"
        TARGETS+=("$t")
    done
    # The same requests, token included, to the plain kairos route (no auth): the baseline
    # that isolates what checking the token costs from what carrying the header costs.
    TARGETS+=(kairos-hs256-noauth kairos-rs256-noauth)
    HDR_OF[kairos-hs256-noauth]=${HDR_OF[kairos-hs256]}
    HDR_OF[kairos-rs256-noauth]=${HDR_OF[kairos-rs256]}
fi

declare -A RL_PID
if [[ $RATELIMIT == 1 ]]; then
    command -v redis-server >/dev/null || die "redis-server is needed for the rate-limit variants (apt-get install redis-server; RATELIMIT=0 skips them)"
    "${ON_AUX[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$TMP" >"$TMP/redis.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.1
    done
    redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG || die "redis-server did not start (see $TMP/redis.log)"
    declare -A RL_CONF=(
        [kairos-rl-memory]='{ "backend": "memory" }'
        [kairos-rl-redis]="{ \"backend\": \"redis\", \"redis_url\": \"redis://127.0.0.1:$REDIS_PORT\" }"
    )
    for t in kairos-rl-memory kairos-rl-redis; do
        kairos_conf "$TMP/$t.json" "${RL_PORT[$t]}" 10 "" "" "${RL_CONF[$t]}"
        "$KAIROS_BIN" config validate "$TMP/$t.json" >&2 || die "kairos config ($t) rejected"
        "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/$t.json" >"$TMP/$t.log" 2>&1 &
        RL_PID[$t]=$!
        PIDS+=("${RL_PID[$t]}")
        wait_ready "$t" "http://127.0.0.1:${RL_PORT[$t]}$HIT_PATH" "${RL_PID[$t]}"
        curl -fsS -D - -o /dev/null "http://127.0.0.1:${RL_PORT[$t]}$HIT_PATH" | grep -qi '^x-ratelimit-remaining' ||
            die "$t answered without rate-limit headers"
        TARGETS+=("$t")
    done
fi

declare -A CACHE_PID
NGXC_WORKER=""
if [[ $CACHE == 1 ]]; then
    mkdir -p "$TMP/nginx-cache/cache"
    start_nginx nginx-cache "${ON_PROXY[@]}"
    NGXC_PID=$STARTED
    wait_ready nginx-cache "http://127.0.0.1:$NGXC_PORT$HIT_PATH" "$NGXC_PID"
    for _ in $(seq 50); do
        NGXC_WORKER=$(pgrep -P "$NGXC_PID" | head -n1 || true)
        [[ -n $NGXC_WORKER ]] && break
        sleep 0.1
    done
    [[ -n $NGXC_WORKER ]] || die "nginx cache worker not found"
    status=$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$NGXC_PORT$HIT_PATH" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "x-cache-status" { print $2 }')
    [[ $status == HIT ]] || die "nginx-cache does not answer from its cache (X-Cache-Status: $status)"
    kairos_conf "$TMP/kairos-cache.json" "$KC_PORT" 10 "" "" "" '{ "backend": "memory" }'
    kairos_conf "$TMP/kairos-cache-churn.json" "$KCH_PORT" 10 "" "" "" \
        "{ \"backend\": \"memory\", \"max_size\": \"$CHURN_MAX\", \"max_object_size\": \"64KB\" }" "/churn/{id}"
    for t in kairos-cache kairos-cache-churn; do
        "$KAIROS_BIN" config validate "$TMP/$t.json" >&2 || die "kairos config ($t) rejected"
    done
    "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos-cache.json" >"$TMP/kairos-cache.log" 2>&1 &
    CACHE_PID[kairos-cache]=$!
    PIDS+=("$!")
    wait_ready kairos-cache "http://127.0.0.1:$KC_PORT$HIT_PATH" "${CACHE_PID[kairos-cache]}"
    x=$(curl -fsS -D - -o /dev/null "http://127.0.0.1:$KC_PORT$HIT_PATH" | tr -d '\r' |
        awk -F': ' 'tolower($1) == "x-cache" { print $2 }')
    [[ $x == HIT ]] || die "kairos-cache does not answer from its cache (X-Cache: $x)"
    "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos-cache-churn.json" >"$TMP/kairos-cache-churn.log" 2>&1 &
    CACHE_PID[kairos-cache-churn]=$!
    PIDS+=("$!")
    for _ in $(seq 300); do
        curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$KCH_PORT/api/items/ready" 2>/dev/null && break
        kill -0 "${CACHE_PID[kairos-cache-churn]}" 2>/dev/null || die "kairos-cache-churn exited during startup"
        sleep 0.1
    done
    # A new key on every request.
    cat >"$TMP/churn.lua" <<'LUA'
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/api/items/" .. n .. "-" .. math.random(1000000000))
end
LUA
    TARGETS+=(nginx-cache kairos-cache kairos-cache-churn)
fi
declare -A TEN_PID
if [[ $TENANCY == 1 ]]; then
    if [[ $RATELIMIT != 1 ]]; then
        command -v redis-server >/dev/null || die "redis-server is needed for kairos-tenant-redis (TENANCY=0 skips it)"
        "${ON_AUX[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --dir "$TMP" >"$TMP/redis.log" 2>&1 &
        PIDS+=("$!")
        for _ in $(seq 100); do
            redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
    fi
    declare -A TEN_CONF=(
        [kairos-tenant-file]="{ \"backend\": \"file\", \"path\": \"$TMP/quotas.db\" }"
        [kairos-tenant-redis]="{ \"backend\": \"redis\", \"redis_url\": \"redis://127.0.0.1:$REDIS_PORT\" }"
    )
    for t in kairos-tenant-file kairos-tenant-redis; do
        kairos_conf "$TMP/$t.json" "${TEN_PORT[$t]}" 10 "" "" "" "" "" "${TEN_CONF[$t]}"
        "$KAIROS_BIN" config validate "$TMP/$t.json" >&2 || die "kairos config ($t) rejected"
        "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/$t.json" >"$TMP/$t.log" 2>&1 &
        TEN_PID[$t]=$!
        PIDS+=("${TEN_PID[$t]}")
        HDR_OF[$t]="X-Tenant-Id: acme"
        wait_ready "$t" "http://127.0.0.1:${TEN_PORT[$t]}$HIT_PATH" "${TEN_PID[$t]}" "${HDR_OF[$t]}"
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${TEN_PORT[$t]}$HIT_PATH")
        [[ $code == 404 ]] || die "$t answered $code without the tenant, not 404"
        curl -fsS -D - -o /dev/null -H "${HDR_OF[$t]}" "http://127.0.0.1:${TEN_PORT[$t]}$HIT_PATH" |
            grep -qi '^x-quota-remaining' || die "$t answered without quota headers"
        TARGETS+=("$t")
    done
    TARGETS+=(kairos-tenant-none)
    HDR_OF[kairos-tenant-none]="X-Tenant-Id: acme"
fi

CHAIN_PID=""
if [[ $CHAIN == 1 ]]; then
    # The collector that is down: a socket bound (so no one else gets its port) that never
    # listens, held for the whole run: every connection to it is refused at once.
    command -v python3 >/dev/null || die "python3 is needed for kairos-chain's dead collector (CHAIN=0 skips it)"
    python3 -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True)
sys.stdout.close(); time.sleep(1e9)' >"$TMP/dead-collector.port" &
    PIDS+=("$!")
    for _ in $(seq 50); do [[ -s $TMP/dead-collector.port ]] && break; sleep 0.1; done
    DEAD_PORT=$(cat "$TMP/dead-collector.port")
    [[ -n $DEAD_PORT ]] || die "no port for the dead collector"
    kairos_conf "$TMP/kairos-chain.json" "$CHAIN_PORT" 10 0.1 \
        "{ \"secret\": \"$HS_SECRET\", \"algorithm\": \"HS256\" }" '{ "backend": "memory" }' \
        "" "" "" "$DEAD_PORT" on
    "$KAIROS_BIN" config validate "$TMP/kairos-chain.json" >&2 || die "kairos config (kairos-chain) rejected"
    # stdout and stderr to a file, as an operator runs it (the access log is on stderr); in a
    # folder of its own: every gateway here watches $TMP (its config's folder), and a log
    # written there would wake each of them, on the proxy's CPU, for every write.
    mkdir -p "$TMP/logs"
    CHAIN_LOG=$TMP/logs/kairos-chain.log
    "${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos-chain.json" >"$CHAIN_LOG" 2>&1 &
    CHAIN_PID=$!
    PIDS+=("$CHAIN_PID")
    HDR_OF[kairos-chain]="Authorization: Bearer $HS_TOKEN"
    wait_ready kairos-chain "http://127.0.0.1:$CHAIN_PORT$HIT_PATH" "$CHAIN_PID" "${HDR_OF[kairos-chain]}"
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$CHAIN_PORT$HIT_PATH")
    [[ $code == 401 ]] || die "kairos-chain answered $code without a token, not 401"
    curl -fsS -D - -o /dev/null -H "${HDR_OF[kairos-chain]}" "http://127.0.0.1:$CHAIN_PORT$HIT_PATH" |
        grep -qi '^x-ratelimit-remaining' || die "kairos-chain answered without rate-limit headers"
    TARGETS+=(kairos-chain)
fi

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

sleep 1
declare -A SCRIPT_OF=()
declare -A PID_OF=([nginx]=$NGX_WORKER [kairos]=$K10_PID [kairos-10k]=$K10K_PID [kairos-b]=${KB_PID:-0})
declare -A URL_OF=(
    [nginx]="http://127.0.0.1:$NGX_PORT$HIT_PATH"
    [kairos]="http://127.0.0.1:$K10_PORT$HIT_PATH"
    [kairos-10k]="http://127.0.0.1:$K10K_PORT$HIT_PATH"
    [kairos-b]="http://127.0.0.1:$KB_PORT$HIT_PATH"
)
for t in "${!TRACE_PID[@]}"; do
    PID_OF[$t]=${TRACE_PID[$t]}
    URL_OF[$t]="http://127.0.0.1:${TRACE_PORT[$t]}$HIT_PATH"
done
for t in "${!AUTH_PID[@]}"; do
    PID_OF[$t]=${AUTH_PID[$t]}
    URL_OF[$t]="http://127.0.0.1:${AUTH_PORT[$t]}$HIT_PATH"
done
for t in "${!RL_PID[@]}"; do
    PID_OF[$t]=${RL_PID[$t]}
    URL_OF[$t]="http://127.0.0.1:${RL_PORT[$t]}$HIT_PATH"
done
if [[ $CACHE == 1 ]]; then
    PID_OF[nginx-cache]=$NGXC_WORKER
    URL_OF[nginx-cache]="http://127.0.0.1:$NGXC_PORT$HIT_PATH"
    PID_OF[kairos-cache]=${CACHE_PID[kairos-cache]}
    URL_OF[kairos-cache]="http://127.0.0.1:$KC_PORT$HIT_PATH"
    PID_OF[kairos-cache-churn]=${CACHE_PID[kairos-cache-churn]}
    URL_OF[kairos-cache-churn]="http://127.0.0.1:$KCH_PORT"
    SCRIPT_OF[kairos-cache-churn]=$TMP/churn.lua
fi
for t in "${!TEN_PID[@]}"; do
    PID_OF[$t]=${TEN_PID[$t]}
    URL_OF[$t]="http://127.0.0.1:${TEN_PORT[$t]}$HIT_PATH"
done
if [[ -n $CHAIN_PID ]]; then
    PID_OF[kairos-chain]=$CHAIN_PID
    URL_OF[kairos-chain]="http://127.0.0.1:$CHAIN_PORT$HIT_PATH"
fi
if [[ $TENANCY == 1 ]]; then
    PID_OF[kairos-tenant-none]=$K10_PID
    URL_OF[kairos-tenant-none]=${URL_OF[kairos]}
fi
if [[ $AUTH == 1 ]]; then
    for t in kairos-hs256-noauth kairos-rs256-noauth; do
        PID_OF[$t]=$K10_PID
        URL_OF[$t]=${URL_OF[kairos]}
    done
fi
declare -A RSS_IDLE RSS_LOAD
for t in "${TARGETS[@]}"; do
    RSS_IDLE[$t]=$(rss_kb "${PID_OF[$t]}")
    RSS_LOAD[$t]=0
done

log "ports: upstream $UP_PORT, nginx $NGX_PORT, kairos $K10_PORT, kairos-10k $K10K_PORT"
log "pinning: $PIN_DESC"
log "runs: $ROUNDS round(s) x ${#TARGETS[@]} targets x (${WARMUP}s warm-up + ${DURATION}s), wrk -t1 -c$CONNECTIONS"

# ---------------------------------------------------------------- measure

declare -A RPS P50 P99 CPU
BAD=0
run_one() { # target, round
    local t=$1 r=$2 url=${URL_OF[$1]} pid=${PID_OF[$1]} out=$TMP/wrk-$1-$2.txt sampler c0 c1 t0 t1
    local hdr=()
    [[ -n ${HDR_OF[$t]:-} ]] && hdr=(-H "${HDR_OF[$t]}")
    [[ -n ${SCRIPT_OF[$t]:-} ]] && hdr+=(-s "${SCRIPT_OF[$t]}")
    in_bg "${ON_AUX[@]}" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${hdr[@]}" "$url" >/dev/null
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    # Sample the RSS of the proxy every 0.5 s while wrk runs; keep the maximum.
    (
        max=0
        while :; do
            v=$(rss_kb "$pid")
            ((v > max)) && max=$v && echo "$max" >"$TMP/rss-$t-$r"
            sleep 0.5
        done
    ) &
    sampler=$!
    PIDS+=("$sampler")
    in_bg "${ON_AUX[@]}" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${hdr[@]}" "$url" >"$out"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    forget "$sampler"
    c1=$(cpu_ticks "$pid")
    t1=$(date +%s.%N)
    local rps p50 p99 rss cpu
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")" 4)
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")" 4)
    [[ -n $rps && -n $p50 && -n $p99 ]] || die "cannot parse wrk output for $t:
$(cat "$out")"
    if grep -q -e 'Non-2xx' -e 'Socket errors' "$out"; then
        log "WARNING $t round $r: $(grep -e 'Non-2xx' -e 'Socket errors' "$out" | tr -s ' ' | tr '\n' ';')"
        grep -q 'Non-2xx' "$out" && BAD=1
    fi
    rss=$(cat "$TMP/rss-$t-$r" 2>/dev/null || echo 0)
    ((rss > RSS_LOAD[$t])) && RSS_LOAD[$t]=$rss
    RPS[$t]+="$rps "
    P50[$t]+="$p50 "
    P99[$t]+="$p99 "
    cpu=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" 'BEGIN { printf "%.0f", 100 * d / hz / (t1 - t0) }')
    CPU[$t]+="$cpu "
    log "round $r $(printf '%-18s' "$t") rps $(printf '%9s' "$rps")  p50 ${p50}ms  p99 ${p99}ms  proxy cpu ${cpu}%"
}

NT=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so that no target always runs first or last.
    for ((k = 0; k < NT; k++)); do
        run_one "${TARGETS[$(((k + r - 1) % NT))]}" "$r"
    done
done

# ---------------------------------------------------------------- report
median() { tr ' ' '\n' | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A M_RPS M_P50 M_P99 M_CPU
for t in "${TARGETS[@]}"; do
    M_RPS[$t]=$(median <<<"${RPS[$t]}")
    M_P50[$t]=$(median <<<"${P50[$t]}")
    M_P99[$t]=$(median <<<"${P99[$t]}")
    M_CPU[$t]=$(median <<<"${CPU[$t]}")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.3f", a / b }'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo
echo "kairos-rs vs nginx reverse proxy: loopback, wrk -t1 -c$CONNECTIONS, ${DURATION}s x $ROUNDS round(s), GET $HIT_PATH"
echo "upstream: nginx 1 worker, return 200 \"ok\"; pinning: $PIN_DESC"
echo "medians over rounds; RSS idle = before load, under load = max sampled during the runs"
echo
printf '%-18s %12s %10s %10s %9s %10s %10s  %s\n' target "req/s" "p50 ms" "p99 ms" "cpu %" "RSS idle" "RSS load" "all req/s"
for t in "${TARGETS[@]}"; do
    printf '%-18s %12.0f %10.3f %10.3f %9s %9sM %9sM  %s\n' "$t" "${M_RPS[$t]}" "${M_P50[$t]}" \
        "${M_P99[$t]}" "${M_CPU[$t]}" "$(mb "${RSS_IDLE[$t]}")" "$(mb "${RSS_LOAD[$t]}")" "${RPS[$t]% }"
done
echo
printf '%-40s %s\n' "kairos / nginx req/s:" "$(ratio "${M_RPS[kairos]}" "${M_RPS[nginx]}")"
printf '%-40s %s\n' "kairos p99 / nginx p99:" "$(ratio "${M_P99[kairos]}" "${M_P99[nginx]}")"
printf '%-40s %s\n' "kairos 10k routes / 10 routes req/s:" "$(ratio "${M_RPS[kairos-10k]}" "${M_RPS[kairos]}")"
printf '%-40s %s MB idle, %s MB under load\n' "kairos RSS (10 routes):" "$(mb "${RSS_IDLE[kairos]}")" "$(mb "${RSS_LOAD[kairos]}")"
printf '%-40s %s MB idle, %s MB under load\n' "kairos RSS (10k routes):" "$(mb "${RSS_IDLE[kairos-10k]}")" "$(mb "${RSS_LOAD[kairos-10k]}")"
if [[ -n ${KB_PID:-} ]]; then
    printf '%-40s %s\n' "kairos-b / kairos req/s:" "$(ratio "${M_RPS[kairos-b]}" "${M_RPS[kairos]}")"
    printf '%-40s %s\n' "kairos-b / nginx req/s:" "$(ratio "${M_RPS[kairos-b]}" "${M_RPS[nginx]}")"
    printf '%-40s %s MB idle, %s MB under load\n' "kairos-b RSS (10 routes):" "$(mb "${RSS_IDLE[kairos-b]}")" "$(mb "${RSS_LOAD[kairos-b]}")"
fi
for t in kairos-t0 kairos-t0.1 kairos-t1; do
    [[ -n ${TRACE_PID[$t]:-} ]] || continue
    printf '%-40s %s\n' "$t (sampling ${TRACE_RATE[$t]}) / kairos req/s:" "$(ratio "${M_RPS[$t]}" "${M_RPS[kairos]}")"
done
for t in kairos-hs256 kairos-rs256; do
    [[ -n ${AUTH_PID[$t]:-} ]] || continue
    printf '%-40s %s\n' "$t / same request, route without auth:" "$(ratio "${M_RPS[$t]}" "${M_RPS[$t-noauth]}")"
    printf '%-40s %s\n' "$t / kairos (no token sent):" "$(ratio "${M_RPS[$t]}" "${M_RPS[kairos]}")"
done
for t in kairos-rl-memory kairos-rl-redis; do
    [[ -n ${RL_PID[$t]:-} ]] || continue
    printf '%-40s %s\n' "$t / kairos req/s:" "$(ratio "${M_RPS[$t]}" "${M_RPS[kairos]}")"
done
if [[ $CACHE == 1 ]]; then
    printf '%-40s %s\n' "kairos-cache (HIT) / kairos (uncached):" "$(ratio "${M_RPS[kairos-cache]}" "${M_RPS[kairos]}")"
    printf '%-40s %s\n' "kairos-cache / nginx-cache (both HIT):" "$(ratio "${M_RPS[kairos-cache]}" "${M_RPS[nginx-cache]}")"
    printf '%-40s %s\n' "kairos-cache p99 / nginx-cache p99:" "$(ratio "${M_P99[kairos-cache]}" "${M_P99[nginx-cache]}")"
    printf '%-40s %s MB idle, %s MB under load (max_size %s)\n' "kairos-cache-churn RSS:" \
        "$(mb "${RSS_IDLE[kairos-cache-churn]}")" "$(mb "${RSS_LOAD[kairos-cache-churn]}")" "$CHURN_MAX"
    churn_metrics=$(curl -fsS "http://127.0.0.1:$KCH_PORT/_kairos/metrics" 2>/dev/null || true)
    printf '%-40s %s bytes, %s entries, %s evictions\n' "kairos-cache-churn cache at the end:" \
        "$(awk '$1 == "kairos_cache_bytes" { print $2 }' <<<"$churn_metrics")" \
        "$(awk '$1 == "kairos_cache_entries" { print $2 }' <<<"$churn_metrics")" \
        "$(awk '$1 == "kairos_cache_evictions_total" { print $2 }' <<<"$churn_metrics")"
fi
for t in kairos-tenant-file kairos-tenant-redis; do
    [[ -n ${TEN_PID[$t]:-} ]] || continue
    printf '%-40s %s\n' "$t / same request, no tenancy:" "$(ratio "${M_RPS[$t]}" "${M_RPS[kairos-tenant-none]}")"
done
if [[ -n $CHAIN_PID ]]; then
    printf '%-40s %s\n' "kairos-chain / kairos req/s:" "$(ratio "${M_RPS[kairos-chain]}" "${M_RPS[kairos]}")"
    # CPU time per request (µs): cpu % / req/s, the medians'. Less noisy than req/s alone.
    us() { awk -v c="$1" -v r="$2" 'BEGIN { if (r + 0 == 0) print "n/a"; else printf "%.2f", c * 1e4 / r }'; }
    printf '%-40s kairos %s, kairos-chain %s\n' "CPU µs per request:" \
        "$(us "${M_CPU[kairos]}" "${M_RPS[kairos]}")" "$(us "${M_CPU[kairos-chain]}" "${M_RPS[kairos-chain]}")"
    printf '%-40s %s access-log lines, %s other lines\n' "kairos-chain log file:" \
        "$(grep -c 'kairos::access' "$CHAIN_LOG" || true)" "$(grep -vc 'kairos::access' "$CHAIN_LOG" || true)"
fi
printf '%-40s %s MB idle, %s MB under load\n' "nginx proxy worker RSS:" "$(mb "${RSS_IDLE[nginx]}")" "$(mb "${RSS_LOAD[nginx]}")"

for t in "${TARGETS[@]:1}"; do
    kill -0 "${PID_OF[$t]}" 2>/dev/null || { log "$t died during the run"; BAD=1; }
done
if [[ $BAD == 1 ]]; then
    log "some runs had non-2xx responses or a server died: the numbers above are not valid"
    exit 1
fi
