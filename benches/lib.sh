# Shared by benches/load/run.sh and benches/soak.sh (sourced, not run): logging, cleanup of
# every process started, tool installation, free ports. The caller sets LOG_TAG and KEEP_TMP
# first, appends the pids it starts to PIDS and may set TMP to a directory to remove.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$LOG_TAG" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup of what we started
PIDS=()
TMP=""
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then
            log "kept $TMP"
        else
            rm -rf "$TMP"
        fi
    fi
    exit "$rc"
}
# Drops a reaped pid from PIDS, so that cleanup never signals a recycled pid.
forget() {
    local keep=() p
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs a command in the background and waits for it: unlike a foreground command, `wait`
# returns as soon as a signal arrives, so Ctrl-C/SIGTERM clean up at once, not after wrk ends.
in_bg() {
    "$@" &
    local pid=$! rc=0
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    forget "$pid"
    return "$rc"
}

# utime + stime of all threads of a process, in clock ticks (CLK_TCK a second).
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)

# A wrk/h2load duration ("338.00us", "1.23ms", "1.01s", "1.5m") in milliseconds, with $2
# decimals (default 3).
to_ms() {
    awk -v v="$1" -v d="${2:-3}" 'BEGIN {
        f = "%." d "f"
        if (v ~ /us$/) { sub(/us$/, "", v); printf f, v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf f, v }
        else if (v ~ /m$/) { sub(/m$/, "", v); printf f, v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf f, v * 1000 }
        else printf "%s", v
    }'
}

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
    SUDO=()
    [[ $EUID -eq 0 ]] || SUDO=(sudo)
    log "installing ${need[*]} with apt-get"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
for t in wrk curl ss awk; do command -v "$t" >/dev/null 2>&1 || die "$t not found"; done

# free_port VAR: sets VAR to a port nothing uses (not via $(...): the list of ports handed
# out must live in this shell). Below the kernel's ephemeral range (32768 and up), so no
# outgoing connection holds it either.
USED_PORTS=" "
free_port() {
    local in_use p
    in_use=" $(ss -Htan 2>/dev/null | awk '{n=split($4,a,":"); printf "%s ", a[n]}') "
    for _ in $(seq 200); do
        p=$((10000 + RANDOM % 22000))
        if [[ $in_use != *" $p "* && $USED_PORTS != *" $p "* ]]; then
            USED_PORTS+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
    die "no free port found"
}

# upstream_nginx_conf DIR PORT [SINK_PORT]: writes DIR/nginx.conf for a one-worker nginx that
# answers 200 "ok" on PORT (and an empty 200 on SINK_PORT, an OTLP sink, when given); start it
# with: "$NGINX" -e DIR/error.log -p DIR -c DIR/nginx.conf -g 'daemon off;' &
upstream_nginx_conf() {
    local dir=$1 port=$2 sink=${3:-} user=""
    # As root nginx would switch its worker to "nobody", which cannot write into our temp dir.
    [[ $EUID -eq 0 ]] && user="user root;"
    mkdir -p "$dir/tmp"
    {
        printf '%s\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log warn;\n' "$user" "$dir" "$dir"
        printf 'events { worker_connections 4096; }\nhttp {\n    access_log off;\n'
        printf '    client_body_temp_path %s/tmp;\n    keepalive_requests 1000000;\n' "$dir"
        printf '    server { listen 127.0.0.1:%s; location / { default_type text/plain; return 200 "ok"; } }\n' "$port"
        [[ -n $sink ]] && printf '    server { listen 127.0.0.1:%s; location / { return 200; } }\n' "$sink"
        printf '}\n'
    } >"$dir/nginx.conf"
}

# ensure_kairos_bin: sets KAIROS_BIN to a release build of the repo (cargo build --release)
# unless it is set already; dies if there is no executable there.
ensure_kairos_bin() {
    if [[ -z ${KAIROS_BIN:-} ]]; then
        log "cargo build --release"
        (cd "$REPO" && cargo build --release --quiet)
        local target_dir
        target_dir=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps |
            sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
        KAIROS_BIN=${target_dir:-$REPO/target}/release/kairos-rs
    fi
    [[ -x $KAIROS_BIN ]] || die "no kairos-rs binary at $KAIROS_BIN"
}
