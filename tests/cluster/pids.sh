# shellcheck shell=bash
# Process helpers shared by slurm_up.sh and slurm_down.sh (sourced, not run). A daemon is identified by the pid in
# its pid file AND its program name, so a recycled pid is never signalled.

proc_alive() {   # proc_alive PID COMM: PID is a live (not zombie) process named COMM
    [ -n "$1" ] && [ -r "/proc/$1/stat" ] && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ] \
        && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

pid_alive() {    # pid_alive PIDFILE COMM: the pid in PIDFILE is a live process named COMM
    [ -s "$1" ] && proc_alive "$(tr -dc '0-9' < "$1")" "$2"
}

# stop_pidfile PIDFILE COMM: TERM, wait up to 20 s, then KILL (only that pid); remove PIDFILE. Appends COMM to the
# caller's `stopped` array when it stopped something.
stop_pidfile() {
    local pid
    if ! pid_alive "$1" "$2"; then rm -f "$1"; return 0; fi
    pid=$(tr -dc '0-9' < "$1")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do proc_alive "$pid" "$2" || break; sleep 0.2; done
    if proc_alive "$pid" "$2"; then
        echo "$(basename "$0"): $2 (pid $pid) ignored SIGTERM for 20 s, sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$1"
    stopped+=("$2")
}
