#!/usr/bin/env bash
# A multi-node Ray cluster on this machine, for development: one head and N worker nodes,
# each a separate raylet, all started with the project's own ray (.venv/bin/ray if present).
#
#   cluster/local.sh up [N] [options]   start a head and N worker nodes (default N=2)
#   cluster/local.sh status [options]   show this cluster's nodes
#   cluster/local.sh down [options]     stop this cluster, and nothing else
#
# Options (each also read from the environment variable in brackets):
#   --port P              GCS port of the head              [METAORCH_RAY_PORT, default 6379]
#   --dir D               state, logs, Ray's temp dirs      [METAORCH_RAY_DIR, default /tmp/metaorch-ray-P]
#   --head-cpus C         CPUs the head advertises          [METAORCH_HEAD_CPUS, default 1]
#   --worker-cpus C       CPUs each worker node advertises  [METAORCH_WORKER_CPUS, default 1]
#   --dashboard-port P    dashboard / job API port          [METAORCH_DASHBOARD_PORT, default 8265]
#   --client-port P       Ray Client server port            [METAORCH_CLIENT_PORT, default 10001]
#   --no-dashboard        start no dashboard (and so no job API)
#   --object-store-mb M   object store per node, MiB        [METAORCH_OBJECT_STORE_MB, default: Ray's]
#   --timeout S           seconds to wait for each node     [METAORCH_RAY_TIMEOUT, default 120]
#
# `down` never runs `ray stop`, which would stop every Ray process of the user on the
# machine (a test session's own instance, another checkout's cluster). Each node is one
# `ray start --block` process in its own session (setsid); its PID is recorded under --dir.
# `down` sends that process SIGTERM (Ray drains the node and stops its raylet, GCS,
# workers and agents), then kills whatever is left in those process groups, then any
# Ray process of this user whose command line names this cluster's --dir.
#
# The dashboard and job API bind to 127.0.0.1. Ray itself replaces a 127.0.0.1 node address
# by the machine's address, and its GCS and raylet gRPC ports listen on all interfaces, so
# on a shared network set RAY_AUTH_MODE=token (see cluster/README.md). RAY_AUTH_MODE is set
# to "disabled" only if you have not set it.
set -euo pipefail

usage() {
    sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    echo "local.sh: $*" >&2
    exit 1
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

cmd="${1:-}"
[[ -n "$cmd" ]] || {
    usage
    exit 2
}
shift
case "$cmd" in
    up | down | status) ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

NUM_WORKERS=2
if [[ "$cmd" == up && $# -gt 0 && "${1:0:1}" != "-" ]]; then
    is_uint "$1" || die "up: N must be a non-negative integer, got '$1'"
    NUM_WORKERS="$1"
    shift
fi

PORT="${METAORCH_RAY_PORT:-6379}"
DIR="${METAORCH_RAY_DIR:-}"
HEAD_CPUS="${METAORCH_HEAD_CPUS:-1}"
WORKER_CPUS="${METAORCH_WORKER_CPUS:-1}"
DASHBOARD_PORT="${METAORCH_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${METAORCH_CLIENT_PORT:-10001}"
DASHBOARD=1
OBJECT_STORE_MB="${METAORCH_OBJECT_STORE_MB:-}"
TIMEOUT="${METAORCH_RAY_TIMEOUT:-120}"

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) need_value "$@"; PORT="$2"; shift 2 ;;
        --dir) need_value "$@"; DIR="$2"; shift 2 ;;
        --head-cpus) need_value "$@"; HEAD_CPUS="$2"; shift 2 ;;
        --worker-cpus) need_value "$@"; WORKER_CPUS="$2"; shift 2 ;;
        --dashboard-port) need_value "$@"; DASHBOARD_PORT="$2"; shift 2 ;;
        --client-port) need_value "$@"; CLIENT_PORT="$2"; shift 2 ;;
        --no-dashboard) DASHBOARD=0; shift ;;
        --object-store-mb) need_value "$@"; OBJECT_STORE_MB="$2"; shift 2 ;;
        --timeout) need_value "$@"; TIMEOUT="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown option '$1' (see cluster/local.sh --help)" ;;
    esac
done

for pair in "port:$PORT" "head-cpus:$HEAD_CPUS" "worker-cpus:$WORKER_CPUS" \
    "dashboard-port:$DASHBOARD_PORT" "client-port:$CLIENT_PORT" "timeout:$TIMEOUT"; do
    is_uint "${pair#*:}" || die "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
for pair in "port:$PORT" "dashboard-port:$DASHBOARD_PORT" "client-port:$CLIENT_PORT"; do
    ((${pair#*:} >= 1024 && ${pair#*:} <= 65535)) || die "--${pair%%:*} must be in 1024..65535, got ${pair#*:}"
done
[[ -z "$OBJECT_STORE_MB" ]] || is_uint "$OBJECT_STORE_MB" || die "--object-store-mb must be an integer"

DIR="${DIR:-/tmp/metaorch-ray-$PORT}"
[[ "$DIR" == /* ]] || DIR="$PWD/$DIR"
DIR="${DIR%/}"
[[ -n "$DIR" && "$DIR" != "/tmp" ]] || die "--dir must name a directory of its own, e.g. /tmp/metaorch-ray-$PORT"
# Written by `up`: `status` and `down` act only on a directory that has it.
MARKER="$DIR/.metaorch-local-cluster"
# Each node gets its own Ray --temp-dir: $DIR/n0 (the head), $DIR/n1, ... (nodes that share
# one race for the names of their Unix sockets when they start together). Those socket
# paths, <temp-dir>/session_<date>_<time>_<pid>/sockets/plasma_store, must fit in 107 bytes.
((${#DIR} <= 34)) || die "--dir '$DIR' is too long for Ray's socket paths (at most 34 characters)"

if [[ -n "${RAY_BIN:-}" ]]; then
    RAY="$RAY_BIN"
elif [[ -x "$ROOT/.venv/bin/ray" ]]; then
    RAY="$ROOT/.venv/bin/ray"
else
    RAY="$(command -v ray || true)"
fi
if [[ "$cmd" != down ]]; then  # `down` needs no Ray
    [[ -n "$RAY" && -x "$RAY" ]] || die "no ray executable: create .venv (make venv), activate an environment with ray, or set RAY_BIN"
    PY="$(dirname "$RAY")/python"
    [[ -x "$PY" ]] || PY="$(command -v python3 || true)"
    [[ -n "$PY" ]] || die "no python next to $RAY and no python3 on PATH"
    # Job entrypoints inherit the nodes' PATH: put the environment's bin first so that
    # `metaorch` and `python` there are the ones a submitted job runs.
    PATH="$(dirname "$RAY"):$PATH"
    export PATH
fi

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# The nodes must not try to join whatever cluster the caller's shell points at.
unset RAY_ADDRESS

ADDRESS="127.0.0.1:$PORT"

# --- process bookkeeping ------------------------------------------------------------

# True if PID is alive and is one of this cluster's `ray start` processes (guards PID reuse).
ours() {
    local pid="$1" cmdline
    is_uint "$pid" && [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
    [[ "$cmdline" == *" start "* && "$cmdline" == *"--temp-dir=$DIR/n"[0-9]* ]]
}

# The recorded `ray start --block` PIDs that are still ours: worker nodes, then the head.
worker_leaders() {
    local f pid
    for f in "$DIR"/worker-*.pid; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f" 2>/dev/null || true)"
        if ours "$pid"; then echo "$pid"; fi
    done
    return 0
}

head_leader() {
    local pid
    pid="$(cat "$DIR/head.pid" 2>/dev/null || true)"
    if ours "$pid"; then echo "$pid"; fi
    return 0
}

# Ray processes of this user that belong to this cluster although their group is another
# one: their command line names this cluster's temp dir and they are python, ray, raylet or
# gcs_server (a `tail -f` of a log there is left alone).
stragglers() {
    local pid exe args
    for pid in $(pgrep -u "$(id -u)" 2>/dev/null || true); do
        [[ "$pid" == "$$" ]] && continue
        args="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || continue
        [[ "$args" == *"$DIR/n"[0-9]* ]] || continue
        exe="${args%% *}"
        exe="${exe##*/}"
        [[ "$exe" =~ ^(python[0-9.]*|ray|raylet|gcs_server)$ ]] && echo "$pid"
    done
    return 0
}

# True if PID exists and is not a zombie (an unreaped exit still answers `kill -0`).
running() {
    local stat rest
    stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
    rest="${stat##*) }"
    [[ "${rest%% *}" != Z ]]
}

wait_gone() {
    # wait_gone SECONDS PID... : until none of the PIDs is running; false on timeout
    local deadline=$((SECONDS + $1)) pid alive
    shift
    while :; do
        alive=0
        for pid in "$@"; do
            if running "$pid"; then alive=1; fi
        done
        ((alive == 0)) && return 0
        ((SECONDS >= deadline)) && return 1
        sleep 0.5
    done
}

stop_cluster() {
    local workers=() head pid left=()
    mapfile -t workers < <(worker_leaders)
    head="$(head_leader)"
    # Worker nodes first, then the head. SIGTERM makes `ray start --block` drain its node
    # (up to 30 s while tasks run) and stop the processes it started.
    if ((${#workers[@]} > 0)); then
        kill -TERM "${workers[@]}" 2>/dev/null || true
        wait_gone 40 "${workers[@]}" || true
    fi
    if [[ -n "$head" ]]; then
        kill -TERM "$head" 2>/dev/null || true
        wait_gone 40 "$head" || true
    fi
    # What is left in the nodes' process groups (each `ray start` ran under setsid, so its
    # PID is its group's id), and any other process of this cluster.
    for pid in "${workers[@]}" $head; do
        mapfile -t -O "${#left[@]}" left < <(pgrep -g "$pid" 2>/dev/null || true)
    done
    mapfile -t -O "${#left[@]}" left < <(stragglers)
    if ((${#left[@]} > 0)); then
        kill -TERM "${left[@]}" 2>/dev/null || true
        if ! wait_gone 10 "${left[@]}"; then
            kill -KILL "${left[@]}" 2>/dev/null || true
            wait_gone 5 "${left[@]}" || true
        fi
    fi
    rm -f "$DIR"/head.pid "$DIR"/worker-*.pid "$DIR"/cluster.env
}

# --- start --------------------------------------------------------------------------

# launch_node NAME TEMP ARGS... : `ray start --block --temp-dir=$DIR/TEMP ARGS` in its own
# session, in the background; its output goes to $DIR/NAME.log, its PID to $DIR/NAME.pid.
launch_node() {
    local name="$1" temp="$2"
    shift 2
    : >"$DIR/$name.log"
    setsid "$RAY" start --block --log-style=record --log-color=false \
        --temp-dir="$DIR/$temp" "$@" >"$DIR/$name.log" 2>&1 </dev/null &
    echo "$!" >"$DIR/$name.pid"
}

# wait_node NAME : until that node is up; false (with the end of its log) if it exits or times out.
wait_node() {
    local name="$1" log pid deadline
    log="$DIR/$name.log"
    pid="$(cat "$DIR/$name.pid")"
    deadline=$((SECONDS + TIMEOUT))
    until grep -q "Ray runtime started" "$log" 2>/dev/null; do
        if ! running "$pid"; then
            echo "local.sh: $name exited while starting; the end of $log:" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "local.sh: $name not up after ${TIMEOUT}s; the end of $log:" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        sleep 0.5
    done
}

# A TCP port free on every interface now (Ray's agents bind the node's address and 127.0.0.1).
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

has_token() {
    [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -s "$HOME/.ray/auth_token" ]]
}

up() {
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    touch "$MARKER"
    if [[ -f "$DIR/head.pid" ]] && ours "$(cat "$DIR/head.pid")"; then
        die "a cluster is already running on $ADDRESS (state in $DIR); run: cluster/local.sh down --port $PORT"
    fi
    port_in_use "$PORT" && die "port $PORT is in use; pick another with --port"
    if ((DASHBOARD)); then
        port_in_use "$DASHBOARD_PORT" && die "dashboard port $DASHBOARD_PORT is in use; pick another with --dashboard-port or use --no-dashboard"
    fi
    port_in_use "$CLIENT_PORT" && die "Ray Client port $CLIENT_PORT is in use; pick another with --client-port"
    if [[ "$RAY_AUTH_MODE" == token ]] && ! has_token; then
        # Ray reads the token from ~/.ray/auth_token; it is never printed here.
        "$RAY" get-auth-token --generate >/dev/null 2>&1 || die "could not generate a Ray auth token"
        chmod 600 "$HOME/.ray/auth_token" 2>/dev/null || true
        echo "local.sh: generated a Ray auth token in ~/.ray/auth_token (readable by you only)"
    fi
    rm -f "$DIR"/worker-*.pid "$DIR"/worker-*.log

    local store=() head_args
    [[ -z "$OBJECT_STORE_MB" ]] || store=(--object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024)))
    # Each node's dashboard agent gets a free port: Ray's fixed default (52365) is often taken
    # by another Ray instance on the machine, and a head without its agent accepts no jobs.
    head_args=(--head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus="$HEAD_CPUS"
        --resources='{"learner": 1}' --ray-client-server-port="$CLIENT_PORT"
        --dashboard-agent-listen-port="$(free_port)" "${store[@]}")
    if ((DASHBOARD)); then
        head_args+=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT")
    else
        head_args+=(--include-dashboard=false)
    fi
    launch_node head n0 "${head_args[@]}"
    if ! wait_node head; then
        stop_cluster
        exit 1
    fi
    # The worker nodes start together (each `ray start` spends seconds importing Ray).
    local i
    for ((i = 1; i <= NUM_WORKERS; i++)); do
        # --num-gpus=0: GPUs are counted once, by the head, not once per node on this machine.
        launch_node "worker-$i" "n$i" --address="$ADDRESS" --node-ip-address=127.0.0.1 \
            --num-cpus="$WORKER_CPUS" --num-gpus=0 --dashboard-agent-listen-port="$(free_port)" "${store[@]}"
    done
    for ((i = 1; i <= NUM_WORKERS; i++)); do
        if ! wait_node "worker-$i"; then
            echo "local.sh: stopping what was started" >&2
            stop_cluster
            exit 1
        fi
    done
    {
        echo "RAY_ADDRESS=$ADDRESS"
        ((DASHBOARD)) && echo "DASHBOARD=http://127.0.0.1:$DASHBOARD_PORT"
        echo "WORKERS=$NUM_WORKERS"
    } >"$DIR/cluster.env"

    echo "Ray cluster up: head + $NUM_WORKERS worker node(s) on this machine (auth: $RAY_AUTH_MODE)"
    echo "  CPUs: head $HEAD_CPUS, each worker node $WORKER_CPUS; the head advertises learner: 1"
    echo "  export RAY_ADDRESS=$ADDRESS"
    if ((DASHBOARD)); then
        echo "  dashboard: http://127.0.0.1:$DASHBOARD_PORT   (jobs: ray job submit --address http://127.0.0.1:$DASHBOARD_PORT ...)"
    fi
    echo "  train: metaorch train configs/sinusoid_maml.yaml --address $ADDRESS"
    echo "  logs:  $DIR    stop: cluster/local.sh down --port $PORT"
}

status() {
    local workers=() head pid
    if [[ ! -f "$MARKER" ]]; then
        echo "no cluster state in $DIR"
        return 1
    fi
    head="$(head_leader)"
    mapfile -t workers < <(worker_leaders)
    if [[ -n "$head" ]]; then echo "head: running (pid $head)"; else echo "head: not running"; fi
    for pid in "${workers[@]}"; do
        echo "worker node: running (pid $pid)"
    done
    if [[ -z "$head" ]]; then
        echo "this cluster is not running (state in $DIR)"
        return 1
    fi
    [[ -f "$DIR/cluster.env" ]] && sed 's/^/  /' "$DIR/cluster.env"
    "$RAY" status --address="$ADDRESS" || true
}

down() {
    if [[ ! -f "$MARKER" ]]; then
        echo "no cluster state in $DIR; nothing to stop"
        return 0
    fi
    stop_cluster
    echo "stopped the cluster on $ADDRESS (logs kept in $DIR)"
}

"$cmd"
