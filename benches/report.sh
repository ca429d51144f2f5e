#!/usr/bin/env bash
# The benchmark report: kairos-rs, NGINX and HAProxy as reverse proxies on the same machine, in
# front of the same upstream (nginx, `return 200 "ok"`), on loopback. Writes benches/REPORT.md
# and the PNG plots beside it (benches/report-*.png). One run of this script regenerates all.
#
#   benches/report.sh                      # DURATION=10 s per run
#   DURATION=2 WARMUP=1 CALLGRIND_N=2000 benches/report.sh     # a short run
#
# What it measures:
#   1. HTTP/1.1 (wrk -t1, keep-alive): requests/s, p50 and p99 latency versus connections
#      (CONCURRENCY), each proxy in turn at each level (the order rotates with the round), the
#      proxy's CPU time per request (utime + stime from /proc/PID/stat over the run) and its
#      RSS after the run. RSS idle is read before the first run.
#   2. HTTP/2 with prior knowledge (h2load -m H2_STREAMS): requests/s and mean latency per
#      client connection count (H2_CONCURRENCY); the proxies speak HTTP/1.1 to the upstream.
#   3. The cost of each middleware stage of kairos-rs in instructions per proxied request
#      (benches/load/callgrind.sh, CALLGRIND_N sequential requests): the plain route, then JWT
#      (HS256, valid token), a per-IP rate limit (memory, never binding), a response-cache HIT,
#      a request and a response transformation, tracing at sampling 0.1 (to a sink).
#
# Pinning (needs 2 CPUs): each proxy runs alone on CPU 0 with one worker (nginx
# worker_processes 1, haproxy nbthread 1, kairos workers 1); the load generator and the
# upstream share CPU 1. Without 2 CPUs nothing is pinned and the report says so.
#
# Environment: DURATION (s, default 10), WARMUP (s, default 2), ROUNDS (default 1),
# CONCURRENCY (default "1 10 100 1000"), H2_CONCURRENCY (default "1 10 100"), H2_STREAMS
# (default 10), CALLGRIND_N (default 20000; 0 skips part 3), KAIROS_BIN (default: cargo build
# --release), OUT (default benches/), KEEP_TMP=1. Installs nginx, wrk, curl, haproxy, h2load
# (nghttp2-client), gnuplot (gnuplot-nox) and valgrind with apt-get when missing.

set -euo pipefail

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-1}
CONCURRENCY=${CONCURRENCY:-1 10 100 1000}
H2_CONCURRENCY=${H2_CONCURRENCY:-1 10 100}
H2_STREAMS=${H2_STREAMS:-10}
CALLGRIND_N=${CALLGRIND_N:-20000}
KEEP_TMP=${KEEP_TMP:-0}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$REPO/benches}
COMMAND="$(printf '%q ' "$0" "$@")"
for v in DURATION WARMUP ROUNDS CONCURRENCY H2_CONCURRENCY H2_STREAMS CALLGRIND_N; do
    COMMAND="$v=\"${!v}\" $COMMAND"
done

LOG_TAG=report
# shellcheck source=benches/lib.sh
. "$REPO/benches/lib.sh"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kairos-report.XXXXXX")
chmod 755 "$TMP"

need=()
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
((CALLGRIND_N > 0)) && { command -v valgrind >/dev/null 2>&1 || need+=(valgrind); }
if ((${#need[@]})); then
    SUDO=()
    [[ $EUID -eq 0 ]] || SUDO=(sudo)
    log "installing ${need[*]} with apt-get"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
ensure_kairos_bin
# wrk and the proxies hold up to 1,000 client connections each.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

ON_PROXY=()
ON_AUX=()
PINNING="none (fewer than 2 CPUs or no taskset)"
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
    ON_PROXY=(taskset -c 0)
    ON_AUX=(taskset -c 1)
    PINNING="proxy on CPU 0, load generator and upstream on CPU 1"
fi

# ---------------------------------------------------------------- the upstream and the proxies
free_port UP_PORT
free_port NGX_PORT
free_port NGX_H2_PORT
free_port HAP_PORT
free_port HAP_H2_PORT
free_port K_PORT
upstream_nginx_conf "$TMP/up" "$UP_PORT"
"${ON_AUX[@]}" "$NGINX" -e "$TMP/up/error.log" -p "$TMP/up" -c "$TMP/up/nginx.conf" -g 'daemon off;' &
PIDS+=($!)

NGX_USER=""
[[ $EUID -eq 0 ]] && NGX_USER="user root;"
mkdir -p "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<EOF
$NGX_USER
worker_processes 1;
worker_rlimit_nofile 16384;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/tmp/client;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream backend {
        server 127.0.0.1:$UP_PORT;
        keepalive 1024;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        listen 127.0.0.1:$NGX_H2_PORT http2;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
"${ON_PROXY[@]}" "$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" -g 'daemon off;' &
NGX_MASTER=$!
PIDS+=("$NGX_MASTER")

cat >"$TMP/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s
    http-reuse always
frontend fe
    bind 127.0.0.1:$HAP_PORT
    bind 127.0.0.1:$HAP_H2_PORT proto h2
    default_backend be
backend be
    server up 127.0.0.1:$UP_PORT
EOF
"$HAPROXY" -c -f "$TMP/haproxy.cfg" >/dev/null || die "haproxy rejected its config"
"${ON_PROXY[@]}" "$HAPROXY" -db -f "$TMP/haproxy.cfg" >"$TMP/haproxy.log" 2>&1 &
HAP_PID=$!
PIDS+=("$HAP_PID")

cat >"$TMP/kairos.json" <<EOF
{ "version": 1,
  "server": { "host": "127.0.0.1", "port": $K_PORT, "workers": 1, "shutdown_timeout": "1s",
              "max_connections": 4096 },
  "upstreams": { "up": { "servers": [{ "url": "http://127.0.0.1:$UP_PORT" }] } },
  "routes": [{ "name": "all", "path": "/{*rest}", "upstream": "up" }],
  "logging": { "level": "warn", "access_log": false } }
EOF
"${ON_PROXY[@]}" "$KAIROS_BIN" --config "$TMP/kairos.json" >"$TMP/kairos.log" 2>&1 &
K_PID=$!
PIDS+=("$K_PID")

PATH_HIT=/api/items/42
wait_ready() { # name, url, pid
    for _ in $(seq 300); do
        curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
        kill -0 "$3" 2>/dev/null || die "$1 exited"
        sleep 0.1
    done
    die "$1 not ready at $2"
}
wait_ready nginx "http://127.0.0.1:$NGX_PORT$PATH_HIT" "$NGX_MASTER"
wait_ready haproxy "http://127.0.0.1:$HAP_PORT$PATH_HIT" "$HAP_PID"
wait_ready kairos-rs "http://127.0.0.1:$K_PORT$PATH_HIT" "$K_PID"
NGX_PID=$(pgrep -P "$NGX_MASTER" | head -n1) || die "nginx worker not found"

PROXIES=(kairos-rs nginx haproxy)
declare -A PID_OF=([kairos-rs]=$K_PID [nginx]=$NGX_PID [haproxy]=$HAP_PID)
declare -A H1_OF=([kairos-rs]=$K_PORT [nginx]=$NGX_PORT [haproxy]=$HAP_PORT)
declare -A H2_OF=([kairos-rs]=$K_PORT [nginx]=$NGX_H2_PORT [haproxy]=$HAP_H2_PORT)

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

sleep 1
declare -A RSS_IDLE
for p in "${PROXIES[@]}"; do RSS_IDLE[$p]=$(rss_kb "${PID_OF[$p]}"); done

# ---------------------------------------------------------------- 1. HTTP/1.1 versus connections
H1=$TMP/h1.tsv # proxy conns round rps p50 p99 cpu_us_per_req rss_kb
: >"$H1"
h1_run() { # proxy, connections, round
    local p=$1 c=$2 r=$3 pid=${PID_OF[$1]} url="http://127.0.0.1:${H1_OF[$1]}$PATH_HIT"
    local out=$TMP/wrk-$p-$c-$r.txt c0 c1 rps p50 p99 n cpu
    in_bg "${ON_AUX[@]}" wrk -t1 -c"$c" -d"${WARMUP}s" "$url" >/dev/null
    c0=$(cpu_ticks "$pid")
    in_bg "${ON_AUX[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "$url" >"$out"
    c1=$(cpu_ticks "$pid")
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    n=$(awk '/requests in/ { print $1 }' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    [[ -n $rps && -n $n && -n $p50 && -n $p99 ]] || die "cannot parse wrk output for $p at $c connections:
$(cat "$out")"
    grep -q 'Non-2xx' "$out" && die "$p answered non-2xx at $c connections: $(grep Non-2xx "$out")"
    cpu=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$c" "$r" "$rps" "$p50" "$p99" "$cpu" "$(rss_kb "$pid")" >>"$H1"
    log "h1 $(printf '%-10s' "$p") c=$(printf '%-5s' "$c") round $r: $rps req/s, p50 ${p50} ms, p99 ${p99} ms, ${cpu} us CPU/request"
}
NP=${#PROXIES[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    i=0
    for c in $CONCURRENCY; do
        # The order rotates from level to level and round to round: no proxy always goes first.
        for ((k = 0; k < NP; k++)); do
            h1_run "${PROXIES[$(((k + i + r - 1) % NP))]}" "$c" "$r"
        done
        i=$((i + 1))
    done
done

# ---------------------------------------------------------------- 2. HTTP/2 (h2c)
H2=$TMP/h2.tsv # proxy conns round rps mean_ms cpu_us_per_req
: >"$H2"
h2_run() { # proxy, connections, round
    local p=$1 c=$2 r=$3 pid=${PID_OF[$1]} url="http://127.0.0.1:${H2_OF[$1]}$PATH_HIT"
    local out=$TMP/h2load-$p-$c-$r.txt c0 c1 rps mean n cpu
    in_bg "${ON_AUX[@]}" h2load -c"$c" -m"$H2_STREAMS" -D"$WARMUP" "$url" >/dev/null
    c0=$(cpu_ticks "$pid")
    in_bg "${ON_AUX[@]}" h2load -c"$c" -m"$H2_STREAMS" -D"$DURATION" "$url" >"$out"
    c1=$(cpu_ticks "$pid")
    rps=$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")
    n=$(awk '/^status codes:/ { print $3 }' "$out")
    mean=$(to_ms "$(awk '/^time for request:/ { print $6 }' "$out")")
    [[ -n $rps && -n $n && -n $mean ]] || die "cannot parse h2load output for $p at $c connections:
$(cat "$out")"
    ((n > 0)) || die "$p answered no 2xx over HTTP/2: $(grep -e '^requests:' -e '^status codes:' "$out" | tr '\n' ' ')"
    cpu=$(awk -v d="$((c1 - c0))" -v hz="$CLK_TCK" -v n="$n" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$c" "$r" "$rps" "$mean" "$cpu" >>"$H2"
    log "h2 $(printf '%-10s' "$p") c=$(printf '%-5s' "$c") round $r: $rps req/s, mean ${mean} ms, ${cpu} us CPU/request"
}
for ((r = 1; r <= ROUNDS; r++)); do
    i=0
    for c in $H2_CONCURRENCY; do
        for ((k = 0; k < NP; k++)); do
            h2_run "${PROXIES[$(((k + i + r - 1) % NP))]}" "$c" "$r"
        done
        i=$((i + 1))
    done
done
declare -A RSS_END
for p in "${PROXIES[@]}"; do RSS_END[$p]=$(rss_kb "${PID_OF[$p]}"); done

# ---------------------------------------------------------------- 3. middleware stages
STAGES=$TMP/stages.tsv # stage instructions
: >"$STAGES"
if ((CALLGRIND_N > 0)); then
    b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
    SECRET=$(openssl rand -hex 32)
    JH=$(printf '{"alg":"HS256","typ":"JWT"}' | b64url)
    JP=$(printf '{"sub":"bench","exp":%s}' "$(($(date +%s) + 86400))" | b64url)
    TOKEN="$JH.$JP.$(printf '%s.%s' "$JH" "$JP" | openssl dgst -sha256 -hmac "$SECRET" -binary | b64url)"
    stage() { # name, then VAR=value assignments for callgrind.sh
        local name=$1 out
        shift
        out=$(env "$@" "$REPO/benches/load/callgrind.sh" "$KAIROS_BIN" "$CALLGRIND_N" 2>"$TMP/cg-$name.log") ||
            die "callgrind.sh failed for $name: $(tail -5 "$TMP/cg-$name.log")"
        local ir=${out%% *}
        [[ $ir =~ ^[0-9]+$ ]] || die "callgrind.sh printed no count for $name: $out"
        printf '%s\t%s\n' "$name" "$ir" >>"$STAGES"
        log "stage $(printf '%-22s' "$name") $ir instructions per request"
    }
    # callgrind.sh binds PORT_BASE..+2: pick a base whose three ports are free.
    free_port CG_PORT
    while ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }' | grep -qx -e "$((CG_PORT + 1))" -e "$((CG_PORT + 2))"; do
        free_port CG_PORT
    done
    export PORT_BASE=$CG_PORT
    stage plain
    stage jwt-hs256 ROUTE_EXTRA=', "auth": "jwt"' HEADER="Authorization: Bearer $TOKEN" \
        EXTRA=", \"jwt_validation\": { \"secret\": \"$SECRET\", \"algorithm\": \"HS256\" }"
    stage rate-limit-per-ip ROUTE_EXTRA=', "rate_limit": { "per_ip": { "rps": 1000000, "burst": 1000000 } }'
    stage cache-hit ROUTE_EXTRA=', "cache": {}' EXTRA=', "caching": { "backend": "memory" }'
    stage transforms EXTRA=', "transformations": [
        { "type": "header_set", "headers": { "X-Bench": "1" } },
        { "type": "header_remove", "phase": "response", "headers": ["Server"] } ]'
    stage tracing-0.1 EXTRA=", \"tracing\": { \"endpoint\": \"http://127.0.0.1:$((CG_PORT + 2))\", \"sampling_rate\": 0.1 }"
fi

# ---------------------------------------------------------------- summaries
# Median over rounds of column $col for (proxy, conns).
median_of() { # file proxy conns col
    awk -F'\t' -v p="$2" -v c="$3" -v col="$4" '$1 == p && $2 == c { print $col }' "$1" |
        sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
: >"$TMP/h1-plot.dat"
: >"$TMP/h2-plot.dat"
for c in $CONCURRENCY; do
    line="$c"
    for p in "${PROXIES[@]}"; do
        line+=" $(median_of "$H1" "$p" "$c" 4) $(median_of "$H1" "$p" "$c" 5) $(median_of "$H1" "$p" "$c" 6) $(median_of "$H1" "$p" "$c" 7)"
    done
    echo "$line" >>"$TMP/h1-plot.dat"
done
for c in $H2_CONCURRENCY; do
    line="$c"
    for p in "${PROXIES[@]}"; do
        line+=" $(median_of "$H2" "$p" "$c" 4) $(median_of "$H2" "$p" "$c" 5)"
    done
    echo "$line" >>"$TMP/h2-plot.dat"
done

# ---------------------------------------------------------------- plots
mkdir -p "$OUT"
PLOT_TERM="set terminal pngcairo size 800,480 font 'sans,10' noenhanced"
gnuplot -e "$PLOT_TERM" >/dev/null 2>&1 || PLOT_TERM="set terminal png size 800,480 noenhanced"
plot_h1() { # file, title, ylabel, first column of kairos (columns: 2+4k+off)
    local file=$1 title=$2 ylabel=$3 off=$4
    gnuplot <<EOF
$PLOT_TERM
set output "$OUT/$file"
set title "$title"
set xlabel "connections (wrk -t1, keep-alive)"
set ylabel "$ylabel"
set logscale x
set xtics ($(echo "$CONCURRENCY" | sed 's/\([0-9][0-9]*\)/"\1" \1/g; s/ "/, "/g'))
set key top left
set grid
plot "$TMP/h1-plot.dat" using 1:$((2 + off)) with linespoints lw 2 title "kairos-rs", \
     "" using 1:$((6 + off)) with linespoints lw 2 title "nginx", \
     "" using 1:$((10 + off)) with linespoints lw 2 title "haproxy"
EOF
}
plot_h1 report-h1-rps.png "HTTP/1.1 requests/s, one worker pinned to one CPU" "requests/s" 0
plot_h1 report-h1-p50.png "HTTP/1.1 p50 latency" "p50 (ms)" 1
plot_h1 report-h1-p99.png "HTTP/1.1 p99 latency" "p99 (ms)" 2
plot_h1 report-h1-cpu.png "CPU time per request (utime + stime)" "microseconds" 3
gnuplot <<EOF
$PLOT_TERM
set output "$OUT/report-h2-rps.png"
set title "HTTP/2 (h2c, h2load -m $H2_STREAMS) requests/s"
set xlabel "client connections"
set ylabel "requests/s"
set logscale x
set xtics ($(echo "$H2_CONCURRENCY" | sed 's/\([0-9][0-9]*\)/"\1" \1/g; s/ "/, "/g'))
set key top left
set grid
plot "$TMP/h2-plot.dat" using 1:2 with linespoints lw 2 title "kairos-rs", \
     "" using 1:4 with linespoints lw 2 title "nginx", \
     "" using 1:6 with linespoints lw 2 title "haproxy"
EOF
if [[ -s $STAGES ]]; then
    gnuplot <<EOF
$PLOT_TERM
set output "$OUT/report-stages.png"
set title "kairos-rs: instructions per proxied request by middleware (callgrind)"
set ylabel "instructions per request"
set style fill solid 0.6
set boxwidth 0.6
set yrange [0:*]
set grid ytics
set xtics rotate by -20
plot "$STAGES" using 0:2:xtic(1) with boxes notitle, \
     "" using 0:2:2 with labels offset 0,0.7 notitle
EOF
fi

# ---------------------------------------------------------------- REPORT.md
# awk reads all of it: `head` closing the pipe early made `haproxy -v` die of SIGPIPE, which
# pipefail turned into the script's exit (141) before REPORT.md was written.
kairos_version=$("$KAIROS_BIN" --version 2>/dev/null | awk 'NR == 1')
nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
haproxy_version=$("$HAPROXY" -v 2>/dev/null | awk 'NR == 1 { print "HAProxy " $3 }')
git_rev=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
{
    echo "# Benchmark report"
    echo
    echo "Generated by \`benches/report.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') from commit \`$git_rev\`:"
    echo
    echo '```sh'
    echo "$COMMAND"
    echo '```'
    echo
    if [[ -n ${REPORT_NOTE:-} ]]; then
        echo "$REPORT_NOTE"
        echo
    fi
    echo "Machine: $(nproc) CPUs ($cpu_model), $(uname -sr). Pinning: $PINNING. Each proxy has"
    echo "one worker: $kairos_version (workers 1), nginx $nginx_version (worker_processes 1,"
    echo "keepalive 1024 to the upstream), $haproxy_version (nbthread 1, http-reuse always). The"
    echo "upstream is one nginx worker answering \`200 ok\`; every run is ${DURATION} s after a ${WARMUP} s"
    echo "warm-up, $ROUNDS round(s), the median of the rounds shown. CPU per request is the proxy's"
    echo "utime + stime over the run (/proc/PID/stat) divided by the requests wrk counted."
    echo
    echo "## HTTP/1.1 versus connections"
    echo
    echo "| connections | proxy | requests/s | p50 ms | p99 ms | CPU us/request | RSS after MB |"
    echo "|---:|---|---:|---:|---:|---:|---:|"
    for c in $CONCURRENCY; do
        for p in "${PROXIES[@]}"; do
            rss=$(median_of "$H1" "$p" "$c" 8)
            printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$c" "$p" \
                "$(median_of "$H1" "$p" "$c" 4)" "$(median_of "$H1" "$p" "$c" 5)" \
                "$(median_of "$H1" "$p" "$c" 6)" "$(median_of "$H1" "$p" "$c" 7)" "$(kb_mb "$rss")"
        done
    done
    echo
    echo "![requests/s](report-h1-rps.png)"
    echo "![p50](report-h1-p50.png)"
    echo "![p99](report-h1-p99.png)"
    echo "![CPU per request](report-h1-cpu.png)"
    echo
    echo "## HTTP/2 (h2c, prior knowledge)"
    echo
    echo "h2load with $H2_STREAMS concurrent streams per connection; the proxies forward over HTTP/1.1."
    echo "h2load reports the mean time per request, not percentiles."
    echo
    echo "| connections | proxy | requests/s | mean ms | CPU us/request |"
    echo "|---:|---|---:|---:|---:|"
    for c in $H2_CONCURRENCY; do
        for p in "${PROXIES[@]}"; do
            printf '| %s | %s | %s | %s | %s |\n' "$c" "$p" "$(median_of "$H2" "$p" "$c" 4)" \
                "$(median_of "$H2" "$p" "$c" 5)" "$(median_of "$H2" "$p" "$c" 6)"
        done
    done
    echo
    echo "![HTTP/2 requests/s](report-h2-rps.png)"
    echo
    echo "## Memory (VmRSS)"
    echo
    echo "| proxy | idle, before the runs MB | after all runs MB |"
    echo "|---|---:|---:|"
    for p in "${PROXIES[@]}"; do
        printf '| %s | %s | %s |\n' "$p" "$(kb_mb "${RSS_IDLE[$p]}")" "$(kb_mb "${RSS_END[$p]}")"
    done
    echo
    echo "For kairos-rs with 10,000 routes, see \`benches/idle_rss.sh\`."
    echo
    if [[ -s $STAGES ]]; then
        echo "## kairos-rs: the cost of each middleware stage"
        echo
        echo "Instructions per proxied request (callgrind, $CALLGRIND_N sequential keep-alive requests"
        echo "minus a run without requests; \`benches/load/callgrind.sh\`), one route \`/{*rest}\` with"
        echo "one feature added at a time. Instruction counts do not depend on the machine's load."
        echo
        echo "| configuration | instructions/request | over plain |"
        echo "|---|---:|---:|"
        plain=$(awk -F'\t' '$1 == "plain" { print $2 }' "$STAGES")
        while IFS=$'\t' read -r name ir; do
            printf '| %s | %s | %s |\n' "$name" "$ir" "$(awk -v a="$ir" -v b="$plain" 'BEGIN { d = a - b; printf "%+d", d }')"
        done <"$STAGES"
        echo
        echo "- jwt-hs256: \`\"auth\": \"jwt\"\`, an HS256 secret, the same valid token on every request"
        echo "  (verified once, then from the per-worker cache)."
        echo "- rate-limit-per-ip: a per-IP limit of 1,000,000 rps (memory backend): a decision per request."
        echo "- cache-hit: \`\"cache\": {}\` on the route, the memory cache; every request after the first is a HIT."
        echo "- transforms: one request header set, one response header removed (top-level \`transformations\`)."
        echo "- tracing-0.1: OpenTelemetry at sampling 0.1, exported to a sink that answers 200."
        echo
        echo "![stages](report-stages.png)"
    fi
} >"$OUT/REPORT.md"
log "wrote $OUT/REPORT.md and $(cd "$OUT" && ls report-*.png | tr '\n' ' ')"
