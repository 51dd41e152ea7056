#!/usr/bin/env bash
# Stop the test cluster started by tests/cluster/slurm_up.sh.
#
#   bash tests/cluster/slurm_down.sh          # stop the daemons, keep $CLUSTERFT_SLURM_DIR
#   bash tests/cluster/slurm_down.sh --wipe   # ... and delete it (next slurm_up is a cold start)
#
# Only the processes whose pids slurm_up.sh recorded in $CLUSTERFT_SLURM_DIR/run are stopped
# (each checked to be the expected program first): slurmd n1, slurmd n2, slurmctld, slurmdbd,
# mariadbd, munged. Jobs still queued or running on the cluster are cancelled first.
set -euo pipefail

STATE="${CLUSTERFT_SLURM_DIR:-/tmp/clusterft-slurm}"
ETC_LINK=/etc/slurm/slurm.conf
WIPE=0
for arg in "$@"; do
    case "$arg" in
        --wipe) WIPE=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "slurm_down: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
export PATH="$PATH:/usr/sbin:/sbin"
export SLURM_CONF="$STATE/etc/slurm.conf"
T0=$(date +%s.%N)

# proc_alive, pid_alive, stop_pidfile
source "$(dirname "${BASH_SOURCE[0]}")/pids.sh"


stopped=()
if [ -d "$STATE" ]; then
    # Cancel this cluster's jobs while slurmctld can still do it, so no slurmstepd is left behind.
    if pid_alive "$STATE/run/slurmctld.pid" slurmctld && [ -f "$SLURM_CONF" ]; then
        jobs_left=$(squeue -h -o %i 2>/dev/null | tr '\n' ' ')
        if [ -n "${jobs_left// /}" ]; then
            # shellcheck disable=SC2086
            scancel $jobs_left 2>/dev/null || true
            for _ in $(seq 50); do
                [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
                sleep 0.2
            done
        fi
    fi
    for pf in "$STATE"/run/slurmd-*.pid; do
        [ -e "$pf" ] && stop_pidfile "$pf" slurmd
    done
    stop_pidfile "$STATE/run/slurmctld.pid" slurmctld
    stop_pidfile "$STATE/run/slurmdbd.pid" slurmdbd
    stop_pidfile "$STATE/run/mariadbd.pid" mariadbd
    stop_pidfile "$STATE/run/munged.pid" munged
fi

if [ "$WIPE" = 1 ]; then
    if [ "$(readlink "$ETC_LINK" 2>/dev/null)" = "$STATE/etc/slurm.conf" ]; then
        rm -f "$ETC_LINK"
        [ -e "$ETC_LINK.clusterft-bak" ] && mv "$ETC_LINK.clusterft-bak" "$ETC_LINK"
    fi
    case "$STATE" in
        /|"") echo "slurm_down: refusing to wipe '$STATE'" >&2; exit 1 ;;
    esac
    rm -rf "$STATE"
fi

echo "slurm_down: stopped ${#stopped[@]} daemon(s)${stopped[*]:+ (${stopped[*]})}$([ "$WIPE" = 1 ] && echo ", wiped $STATE") in $(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s"
