#!/usr/bin/env bash
# A single-node SLURM on this machine, for trying and testing the cluster profile
# (workflow/profiles/slurm) without a cluster. Debian/Ubuntu, as root, no systemd needed.
#
#   scripts/slurm/start-slurm.sh [--install]     # then sinfo, sbatch, squeue ... just work
#   scripts/slurm/stop-slurm.sh                  # stops only what this script started
#
# The node is this machine (NodeName=localhost, its real CPUs and memory from `slurmd -C`)
# with two partitions, `cpu` (the default) and `gpu`, and ARTSIM_SLURM_GPUS pretend GPUs
# (GRES without devices) so that jobs asking for `--gres=gpu:1` are scheduled as on a
# cluster. No accounting (sacct does not work): Snakemake must query job states with
# squeue, which `artsim run --cluster` arranges. Idempotent: a second call finds the
# daemons running and only waits for the node.
#
# State, configuration and logs: $ARTSIM_SLURM_DIR (default /tmp/artsim-slurm); the
# configuration is also linked at /etc/slurm/slurm.conf (where the commands look), unless
# a slurm.conf is there already (a real SLURM: then this script does nothing).
# Exit status: 0 ready; 3 not possible here (not root, the packages are missing and cannot be
# installed, or a real SLURM is configured); anything else: a real failure (see the logs it names).
set -euo pipefail

STATE=${ARTSIM_SLURM_DIR:-/tmp/artsim-slurm}
GPUS=${ARTSIM_SLURM_GPUS:-2}
CTLD_PORT=${ARTSIM_SLURM_PORT:-6817}
PACKAGES=(slurmctld slurmd slurm-client munge)
CONF=$STATE/etc/slurm.conf

say() { echo "start-slurm: $*" >&2; }
unavailable() { say "$*"; exit 3; }

[[ $(id -u) == 0 ]] || unavailable "needs root (the daemons run as root and as the slurm user)"

missing_tools() {
    local t
    for t in slurmctld slurmd munged sinfo sbatch squeue scontrol; do
        command -v "$t" >/dev/null || echo "$t"
    done
}

if [[ -n $(missing_tools) ]]; then
    if [[ ${1:-} != --install ]]; then
        unavailable "missing $(missing_tools | tr '\n' ' ')(run with --install, or: apt-get install -y --no-install-recommends ${PACKAGES[*]})"
    fi
    say "installing ${PACKAGES[*]}"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
        >"${TMPDIR:-/tmp}/artsim-slurm-apt.log" 2>&1 \
        || unavailable "apt-get failed (log: ${TMPDIR:-/tmp}/artsim-slurm-apt.log)"
fi

mkdir -p "$STATE"/{etc,log,ctld,spool}
chown slurm: "$STATE/ctld" "$STATE/log"
chmod 755 "$STATE" "$STATE/etc"
touch "$STATE/started"  # the daemons this script started, one "name pidfile" a line

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
started() { grep -q "^$1 " "$STATE/started" || echo "$1 $2" >>"$STATE/started"; }

# -- munge: authentication between the commands and the daemons ------------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
            || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown munge: /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge: /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- munged
    started munged /run/munge/munged.pid
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
fi

# -- the configuration ---------------------------------------------------------------
node=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+/NodeName=localhost/')
cpus=$(sed -E 's/.*CPUs=([0-9]+).*/\1/' <<<"$node")
mem=$(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$node")
gres=""
if ((GPUS > 0)); then gres=" Gres=gpu:$GPUS"; fi
cat >"$CONF.new" <<EOF
# Written by scripts/slurm/start-slurm.sh: a single-node cluster for testing.
ClusterName=artsim
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmdPort=$((CTLD_PORT + 1))
AuthType=auth/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# No cgroups, no systemd: track job processes by their parent, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
# No accounting database: sacct does not answer, squeue does (MinJobAge: the default 300 s).
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# Cores and memory are consumable, so jobs share the node; a job that asks for no memory
# gets DefMemPerCPU per CPU rather than the whole node.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem / cpus / 4))
ReturnToService=2
GresTypes=gpu
$node$gres State=UNKNOWN
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
EOF
# Pretend GPUs: SLURM counts a GPU per device file, so each is a character device like
# /dev/null (a plain file where mknod is not allowed: slurmd logs an error but counts it).
mkdir -p "$STATE/dev"
for ((i = 0; i < GPUS; i++)); do
    [[ -e $STATE/dev/gpu$i ]] || mknod "$STATE/dev/gpu$i" c 1 3 2>/dev/null || touch "$STATE/dev/gpu$i"
done
if ((GPUS > 0)); then
    echo "NodeName=localhost Name=gpu File=$STATE/dev/gpu[0-$((GPUS - 1))]" >"$STATE/etc/gres.conf.new"
else
    : >"$STATE/etc/gres.conf.new"
fi
chmod 644 "$CONF.new" "$STATE/etc/gres.conf.new"

if ! cmp -s "$CONF.new" "$CONF" || ! cmp -s "$STATE/etc/gres.conf.new" "$STATE/etc/gres.conf"; then
    if alive "$STATE/slurmctld.pid" || alive "$STATE/slurmd.pid"; then
        say "the configuration changed: restarting the daemons"
        "$(dirname "$0")/stop-slurm.sh"
        touch "$STATE/started"
    fi
    mv "$CONF.new" "$CONF" && mv "$STATE/etc/gres.conf.new" "$STATE/etc/gres.conf"
else
    rm -f "$CONF.new" "$STATE/etc/gres.conf.new"
fi
export SLURM_CONF=$CONF
# The commands also need the configuration where they look by default: Snakemake's job step
# drops SLURM_* variables (SLURM_CONF too) before its srun. A foreign slurm.conf stays as it is.
ETC_CONF=/etc/slurm/slurm.conf
if [[ $(readlink "$ETC_CONF" 2>/dev/null) != "$CONF" ]]; then
    [[ ! -e $ETC_CONF && ! -L $ETC_CONF ]] \
        || unavailable "$ETC_CONF exists and is not this script's: not touching a real SLURM"
    mkdir -p /etc/slurm && ln -s "$CONF" "$ETC_CONF"
fi
grep -q "^link " "$STATE/started" || echo "link $ETC_CONF" >>"$STATE/started"

# -- the daemons -----------------------------------------------------------------------
if ! alive "$STATE/slurmctld.pid"; then
    slurmctld -f "$CONF"
    started slurmctld "$STATE/slurmctld.pid"
fi
if ! alive "$STATE/slurmd.pid"; then
    slurmd -f "$CONF" -N localhost
    started slurmd "$STATE/slurmd.pid"
fi

for _ in $(seq 150); do
    state=$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1 || true)
    case $state in
        idle|mixed|allocated) break ;;
        drain*|down*) scontrol update NodeName=localhost State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
done
if [[ ! $state =~ ^(idle|mixed|allocated)$ ]]; then
    say "the node did not come up (state: '${state:-none}'); logs: $STATE/log/"
    tail -n 5 "$STATE"/log/*.log >&2 || true
    exit 1
fi
say "node localhost is $state ($cpus CPUs, $mem MB, $GPUS pretend GPUs; partitions cpu, gpu)"
echo "export SLURM_CONF=$CONF"
