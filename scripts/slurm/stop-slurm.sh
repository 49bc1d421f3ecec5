#!/usr/bin/env bash
# Stop the single-node SLURM that scripts/slurm/start-slurm.sh started: its jobs are
# cancelled, then the daemons it recorded as started (and only those) are stopped, newest
# first, and its /etc/slurm/slurm.conf link is removed. A munged that was already running
# is left alone. The logs and the configuration stay in the state directory.
set -euo pipefail

STATE=${ARTSIM_SLURM_DIR:-/tmp/artsim-slurm}
RECORD=$STATE/started
[[ -s $RECORD ]] || { echo "stop-slurm: nothing started by start-slurm.sh ($RECORD)" >&2; exit 0; }

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if grep -q "^slurmctld " "$RECORD" && alive "$STATE/slurmctld.pid"; then
    export SLURM_CONF=$STATE/etc/slurm.conf
    ids=$(squeue -h -o %i 2>/dev/null || true)
    if [[ -n $ids ]]; then
        scancel $ids 2>/dev/null || true
        for _ in $(seq 50); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.2; done
    fi
fi

tac "$RECORD" | while read -r name pidfile; do
    if [[ $name == link ]]; then  # the /etc/slurm/slurm.conf link, if it is still ours
        [[ $(readlink "$pidfile" 2>/dev/null) == "$STATE/etc/slurm.conf" ]] && rm -f "$pidfile"
        continue
    fi
    alive "$pidfile" || continue
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; fi
    echo "stop-slurm: stopped $name ($pid)" >&2
done
: >"$RECORD"
