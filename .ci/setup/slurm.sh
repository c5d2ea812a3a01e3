#!/usr/bin/env bash
# A single-node SLURM cluster on 127.0.0.1 for the slow SLURM tests (tests/test_slurm.py):
# munge, slurmctld and slurmd started directly (CI machines have no systemd). Run as root;
# idempotent: a second run leaves running daemons alone and only waits for the node.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
conf=/etc/slurm/slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# this machine's CPUs and memory as slurmd sees them; CR_CPU hands out single CPUs, so two
# one-CPU array tasks run at once on two cores (the CI machine has two)
hardware=$(slurmd -C | head -1 | sed -e "s/^NodeName=[^ ]*/NodeName=$host/" -e 's/ UpTime=.*//')
cat > "$conf.new" <<CONF
ClusterName=lesa-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# a test cluster: look at the queue every 2 s (default 60), so a released requeued task starts
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobRequeue=1
MinJobAge=600
$hardware NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
changed=0
if ! cmp -s "$conf.new" "$conf"; then mv "$conf.new" "$conf"; changed=1; else rm "$conf.new"; fi

# munge: a key (the package makes one; a bare image may lack it), then the daemon as its user
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
        || dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.2; done

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then  # a new config: restart whatever runs with the old one
    for pidfile in /run/slurmd.pid /run/slurmctld.pid; do
        if alive "$pidfile"; then kill "$(cat "$pidfile")"; sleep 1; fi
    done
fi
alive /run/slurmctld.pid || slurmctld
alive /run/slurmd.pid || slurmd

for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %t 2>/dev/null || true)
    case "$state" in
        idle|mix|alloc) echo "slurm: node $host $state ($(sinfo -h -o '%c CPUs' -n "$host"))"; exit 0 ;;
        down*|drain*|drng*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "slurm: node $host did not become idle (state: ${state:-none}); see /var/log/slurm/" >&2
exit 1
