# Starts (or reuses) a real single-node Slurm on 127.0.0.1 for the tests; source it: `. tests/services/slurm_up.sh`.
# Exports SLURM_CONF, OUTLIER_LAB_SLURM_DIR, OUTLIER_LAB_TEST_SLURM=1, OUTLIER_LAB_SLURM_STARTED (1: this call started
# the daemons) and PATH with a sacct stand-in first.
# Idempotent: a cluster already answering in $OUTLIER_LAB_SLURM_DIR is reused. Stop it with tests/services/slurm_down.sh.
# Facts behind the settings, measured on the CI machine kind (Debian 12, slurm-wlm 22.05, root, no systemd): cgroup
# plugins fail silently (srun exits 0, jobs COMPLETED with no output), so proctrack/linuxproc and task/none; without
# accounting `sacct` fails, and submitit then warns on every poll and `job.result()` hangs forever on a cancelled
# job, hence a sacct stand-in first on PATH that answers `sacct -o JobID,State,NodeList --parsable2 -j ID` from
# `scontrol show job -o ID`; slurm_down.sh scancels and waits for an empty squeue before stopping slurmd, or orphaned
# slurmstepd/srun processes survive.

_outlier_lab_slurm_wait() {  # poll command "${@:2}" until it succeeds, for at most $1 seconds
    local deadline=$((SECONDS + $1)); shift
    while [ "$SECONDS" -le "$deadline" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# No pipes in these checks: .ci/run sources this file under `set -o pipefail`, where grep -q's early exit can fail a
# pipeline that matched.
_outlier_lab_slurm_node_ready() {
    local states
    states=$(timeout 3 sinfo -h -N -o %T 2>/dev/null) || return 1
    grep -Eq '^(idle|mixed|allocated)' <<<"$states"
}

_outlier_lab_slurm_ping() {
    local answer
    answer=$(timeout 3 scontrol ping 2>/dev/null) || return 1
    [[ "$answer" == *UP* ]]
}

_outlier_lab_munge_works() {
    local credential
    credential=$(munge -n 2>/dev/null) || return 1
    unmunge >/dev/null 2>&1 <<<"$credential"
}

_outlier_lab_slurm_up() {
    local dir="${OUTLIER_LAB_SLURM_DIR:-/tmp/outlier_lab_slurm}"
    local here
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    local ctld_port="${OUTLIER_LAB_SLURMCTLD_PORT:-6817}" slurmd_port="${OUTLIER_LAB_SLURMD_PORT:-6818}"

    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
        # policy-rc.d stops the packages' postinst from starting daemons outside our control.
        local made_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            munge slurmctld slurmd slurm-client >/dev/null 2>&1
        [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
        if ! command -v slurmctld >/dev/null; then
            echo "slurm_up: apt-get install of munge/slurmctld/slurmd/slurm-client failed" >&2
            return 1
        fi
    fi

    mkdir -p "$dir/bin" "$dir/state" "$dir/spool" "$dir/log"
    install -m 0755 "$here/slurm/sacct" "$dir/bin/sacct"

    export SLURM_CONF="$dir/slurm.conf"
    export OUTLIER_LAB_SLURM_DIR="$dir"
    case ":$PATH:" in *":$dir/bin:"*) ;; *) export PATH="$dir/bin:$PATH" ;; esac

    # The marker changes whenever the config below does, so a cluster from an older version is replaced.
    local marker="# outlier_lab test cluster v3"
    if [ -f "$SLURM_CONF" ] && grep -qx "$marker" "$SLURM_CONF" && _outlier_lab_slurm_ping \
        && _outlier_lab_slurm_node_ready; then
        export OUTLIER_LAB_TEST_SLURM=1 OUTLIER_LAB_SLURM_STARTED=0
        return 0
    fi
    # A half-dead cluster from an earlier run: stop its Slurm daemons before writing a fresh config.
    [ -f "$SLURM_CONF" ] && bash "$here/slurm_down.sh" --keep-munge >/dev/null 2>&1

    if ! _outlier_lab_munge_works; then
        install -d -o munge -g munge -m 0755 /run/munge
        if [ ! -s /etc/munge/munge.key ]; then
            mungekey --create --force >/dev/null 2>&1 || create-munge-key -f >/dev/null 2>&1
            chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
        fi
        runuser -u munge -- /usr/sbin/munged && touch "$dir/munged.started"
        if ! _outlier_lab_slurm_wait 10 _outlier_lab_munge_works; then
            echo "slurm_up: munged did not start" >&2
            return 1
        fi
    fi

    local mem_mib
    mem_mib=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
    # Stand-in GPUs: slurmd counts gres/gpu by device files, so these are /dev/null-like character devices. Jobs
    # ask for gpu:t4:N as on a GPU site, are scheduled by gres, and run on the CPU.
    mkdir -p "$dir/dev"
    local gpu_type index
    for gpu_type in t4 l4; do
        for index in 0 1 2 3 4 5 6 7; do
            [ -e "$dir/dev/${gpu_type}_$index" ] || mknod "$dir/dev/${gpu_type}_$index" c 1 3 2>/dev/null \
                || touch "$dir/dev/${gpu_type}_$index"
        done
    done
    cat >"$dir/gres.conf" <<CONF
NodeName=localhost Name=gpu Type=t4 File=$dir/dev/t4_[0-7]
NodeName=localhost Name=gpu Type=l4 File=$dir/dev/l4_[0-7]
CONF
    cat >"$SLURM_CONF" <<CONF
$marker
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
# cgroup plugins fail silently on this machine kind (jobs COMPLETED with no output).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Listen on 127.0.0.1 only.
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ReturnToService=2
# Finished jobs stay visible to scontrol (and so to the sacct stand-in) for an hour.
MinJobAge=3600
KillWait=5
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mib Gres=gpu:t4:8,gpu:l4:8 State=UNKNOWN
# Jobs in "urgent" preempt (cancel) jobs in "debug", so tests can produce a real PREEMPTED job.
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2
CONF

    slurmctld -c -f "$SLURM_CONF" </dev/null >"$dir/log/slurmctld.out" 2>&1
    if ! _outlier_lab_slurm_wait 20 _outlier_lab_slurm_ping; then
        echo "slurm_up: slurmctld did not answer; log tail:" >&2
        tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmctld.out" >&2 2>/dev/null
        return 1
    fi
    # The node is named localhost, which is not this machine's hostname, hence -N.
    slurmd -N localhost -f "$SLURM_CONF" </dev/null >"$dir/log/slurmd.out" 2>&1
    if ! _outlier_lab_slurm_wait 30 _outlier_lab_slurm_node_ready; then
        echo "slurm_up: slurmd did not register; log tail:" >&2
        tail -n 20 "$dir/log/slurmd.log" "$dir/log/slurmd.out" >&2 2>/dev/null
        return 1
    fi
    # Tells a caller (the pytest fixture) that this call started the daemons and so owns their teardown.
    export OUTLIER_LAB_TEST_SLURM=1 OUTLIER_LAB_SLURM_STARTED=1
}

_outlier_lab_slurm_up || echo "slurm_up: Slurm is not running; the Slurm tests will try again and skip with a reason" >&2
