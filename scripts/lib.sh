# scripts/lib.sh — shell helpers shared by scripts/run and scripts/test.
# shellcheck shell=bash
#
# Source it (". scripts/lib.sh"); it defines functions only, sets no options.
# Provides: repo root, free TCP ports, the unprivileged Postgres user, and
# start/stop of a private Postgres cluster (unix socket only) and a private
# Redis. Postgres refuses to run as root, so when we are root its programs run
# as the system user "sluice" (created on demand) via runuser.

SL_PG_USER="${SL_PG_USER:-sluice}"

# sl_log MSG... — a prefixed line on stderr.
sl_log() { printf '[sluice] %s\n' "$*" >&2; }

# sl_die MSG... — log and exit 1.
sl_die() { sl_log "error: $*"; exit 1; }

# sl_repo_root — absolute path of the checkout (parent of scripts/).
sl_repo_root() { (cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P); }

# sl_port_free PORT — true if nothing listens on 127.0.0.1:PORT (TCP) and a
# bind succeeds.
sl_port_free() {
    /usr/bin/python3 - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

# sl_free_port [PREFERRED] — prints PREFERRED if it is free, else a free
# ephemeral port chosen by the kernel.
sl_free_port() {
    if [ -n "${1:-}" ] && sl_port_free "$1"; then
        printf '%s\n' "$1"
        return 0
    fi
    /usr/bin/python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# sl_pg_bindir — the newest /usr/lib/postgresql/<ver>/bin.
sl_pg_bindir() {
    local d best="" bestv=0 v
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/postgres" ] || continue
        v="${d#/usr/lib/postgresql/}"; v="${v%%/*}"; v="${v%%.*}"
        case "$v" in ''|*[!0-9]*) continue ;; esac
        if [ "$v" -gt "$bestv" ]; then bestv="$v"; best="$d"; fi
    done
    [ -n "$best" ] || { sl_log "no PostgreSQL server found under /usr/lib/postgresql (run scripts/install-deps)"; return 1; }
    printf '%s\n' "$best"
}

# sl_is_root — true when the effective uid is 0.
sl_is_root() { [ "$(id -u)" -eq 0 ]; }

# sl_ensure_pg_user — when root, create the system user that runs Postgres.
sl_ensure_pg_user() {
    sl_is_root || return 0
    id -u "$SL_PG_USER" >/dev/null 2>&1 && return 0
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SL_PG_USER"
}

# sl_as_pg CMD... — run CMD as the Postgres owner (sluice when root, else us).
# Paths given to it must be absolute.
sl_as_pg() {
    if sl_is_root; then
        # cd /: the caller's cwd may not be traversable by that user.
        (cd / && runuser -u "$SL_PG_USER" -- "$@")
    else
        "$@"
    fi
}

# sl_pg_owns DIR... — make DIRs (created if needed) owned by the Postgres owner.
sl_pg_owns() {
    mkdir -p "$@"
    if sl_is_root; then chown "$SL_PG_USER": "$@"; fi
}

# sl_pg_init DATADIR — initdb once (trust auth, superuser named after the
# invoking OS user so libpq's default user name works over the socket).
sl_pg_init() {
    local data="$1" bindir me
    [ -f "$data/PG_VERSION" ] && return 0
    bindir="$(sl_pg_bindir)" || return 1
    me="$(id -un)"
    sl_ensure_pg_user || return 1
    sl_pg_owns "$data"
    chmod 700 "$data"
    sl_as_pg "$bindir/initdb" -D "$data" -U "$me" -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
        >"${data%/}.initdb.log" 2>&1 \
        || { sl_log "initdb failed:"; cat "${data%/}.initdb.log" >&2; return 1; }
}

# sl_pg_start DATADIR SOCKDIR PORT LOGFILE [fast] — start the cluster with
# pg_ctl (waits until it accepts connections). "fast" turns off fsync for
# throwaway test clusters. The log file's directory must be writable by the
# Postgres owner.
sl_pg_start() {
    local data="$1" sock="$2" port="$3" logf="$4" mode="${5:-}" bindir opts
    bindir="$(sl_pg_bindir)" || return 1
    sl_pg_owns "$sock"
    touch "$logf"
    if sl_is_root; then chown "$SL_PG_USER": "$logf"; fi
    opts="-k $sock -c listen_addresses= -p $port -c max_connections=200"
    if [ "$mode" = fast ]; then
        opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    fi
    sl_as_pg "$bindir/pg_ctl" -D "$data" -l "$logf" -o "$opts" -w -t 60 start >/dev/null \
        || { sl_log "postgres failed to start; log tail:"; tail -n 30 "$logf" >&2; return 1; }
}

# sl_pg_stop DATADIR [mode] — stop the cluster (mode fast by default); no-op
# when not running.
sl_pg_stop() {
    local data="$1" mode="${2:-fast}" bindir
    [ -f "$data/postmaster.pid" ] || return 0
    bindir="$(sl_pg_bindir)" || return 1
    sl_as_pg "$bindir/pg_ctl" -D "$data" -m "$mode" -w -t 60 stop >/dev/null 2>&1 \
        || sl_as_pg "$bindir/pg_ctl" -D "$data" -m immediate -w -t 30 stop >/dev/null 2>&1 \
        || true
}

# sl_pg_running DATADIR — true if the cluster's postmaster is alive.
sl_pg_running() {
    local bindir
    bindir="$(sl_pg_bindir)" || return 1
    sl_as_pg "$bindir/pg_ctl" -D "$1" status >/dev/null 2>&1
}

# sl_pg_createdb SOCKDIR PORT NAME — create database NAME unless it exists.
sl_pg_createdb() {
    local sock="$1" port="$2" name="$3" bindir have
    bindir="$(sl_pg_bindir)" || return 1
    have="$("$bindir/psql" -h "$sock" -p "$port" -d postgres -XAtq \
        -c "SELECT 1 FROM pg_database WHERE datname = '$name'")" || return 1
    [ "$have" = 1 ] && return 0
    "$bindir/createdb" -h "$sock" -p "$port" "$name"
}

# sl_pg_url SOCKDIR PORT NAME — the libpq URI for a database on the cluster.
sl_pg_url() { printf 'postgresql:///%s?host=%s&port=%s\n' "$3" "$1" "$2"; }

# sl_redis_start PORT DIR LOGFILE PIDFILE [detach] — start redis-server in the
# background (not daemonized; its pid goes to PIDFILE) and wait for PONG.
# "detach" puts it in its own session so it outlives the calling shell.
sl_redis_start() {
    local port="$1" dir="$2" logf="$3" pidf="$4" mode="${5:-}" pid
    mkdir -p "$dir"
    if [ "$mode" = detach ]; then
        setsid redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$dir" </dev/null >"$logf" 2>&1 &
    else
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --dir "$dir" </dev/null >"$logf" 2>&1 &
    fi
    pid=$!
    printf '%s\n' "$pid" >"$pidf"
    for _ in $(seq 1 100); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ]; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    sl_log "redis failed to start; log tail:"; tail -n 20 "$logf" >&2
    return 1
}

# sl_pid_stop PIDFILE [timeout_s] — SIGTERM the pid in PIDFILE, wait, then
# SIGKILL; removes PIDFILE. No-op when absent or dead.
sl_pid_stop() {
    local pidf="$1" t="${2:-15}" pid
    [ -f "$pidf" ] || return 0
    pid="$(cat "$pidf" 2>/dev/null)"
    rm -f "$pidf"
    case "$pid" in ''|*[!0-9]*) return 0 ;; esac
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((t * 10))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# sl_pid_alive PIDFILE — true if PIDFILE names a live process.
sl_pid_alive() {
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null)"
    case "$pid" in ''|*[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null
}

# sl_wait_http URL TIMEOUT_S [PID] — wait until URL answers 200; fails early
# if PID dies.
sl_wait_http() {
    local url="$1" t="$2" pid="${3:-}"
    for _ in $(seq 1 $((t * 10))); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}
