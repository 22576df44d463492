#!/usr/bin/env bash
# Stops the test Slurm started by slurm_up.sh: cancels jobs, waits for an empty queue, then slurmd, slurmctld, munged.
dir="${OUTLIER_LAB_SLURM_DIR:-/tmp/outlier_lab_slurm}"
export SLURM_CONF="$dir/slurm.conf"

alive() {  # a zombie re-parented to PID 1 still answers kill -0 for a while, so read its state
    [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat"
}

stop_pid_file() {
    local pid_file=$1 pid tries=100
    [ -s "$pid_file" ] || return 0
    pid=$(cat "$pid_file")
    alive "$pid" || return 0
    kill "$pid" 2>/dev/null
    while alive "$pid" && [ "$tries" -gt 0 ]; do sleep 0.1; tries=$((tries - 1)); done
    alive "$pid" && kill -9 "$pid" 2>/dev/null
    return 0
}

if [ -f "$SLURM_CONF" ] && [[ "$(timeout 3 scontrol ping 2>/dev/null)" == *UP* ]]; then
    # Orphaned slurmstepd/srun processes survive when slurmd stops before its jobs are gone.
    scancel --full --user="$(id -un)" 2>/dev/null
    for _ in $(seq 300); do
        [ -z "$(timeout 3 squeue -h -o %i 2>/dev/null)" ] && break
        sleep 0.1
    done
fi
stop_pid_file "$dir/slurmd.pid"
stop_pid_file "$dir/slurmctld.pid"
# slurm_up.sh passes --keep-munge when it only replaces a stale Slurm.
if [ "${1:-}" != "--keep-munge" ] && [ -f "$dir/munged.started" ]; then
    stop_pid_file /run/munge/munged.pid
    rm -f "$dir/munged.started"
fi
