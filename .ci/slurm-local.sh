#!/usr/bin/env bash
# A one-node SLURM on 127.0.0.1 for the `slurm` tests: munge, MariaDB + slurmdbd (so `sacct`
# works: the snakemake slurm executor polls it), slurmctld and slurmd, without cgroups.
#   bash .ci/slurm-local.sh start   # installs Debian's packages if missing (root), starts daemons
#   bash .ci/slurm-local.sh stop    # stops exactly the daemons it started, by their recorded PIDs
set -euo pipefail
STATE=${STUDYFLOW_SLURM_STATE:-/tmp/studyflow-slurm}
action=${1:-start}

stop_all() {
  for daemon in slurmd slurmctld slurmdbd mariadb munged; do
    pidfile="$STATE/$daemon.pid"
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      echo "stopped $daemon (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}

if [ "$action" = stop ]; then stop_all; exit 0; fi
[ "$action" = start ] || { echo "usage: $0 start|stop" >&2; exit 2; }

started=$(date +%s)
need=""
for pkg in slurm-wlm munge slurmdbd mariadb-server; do dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"; done
if [ -n "$need" ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
mkdir -p "$STATE"/{ctld,slurmd,log}
host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

# munge: the package made the key; munged refuses root, so it runs as its own user
mkdir -p /run/munge && chown munge:munge /run/munge
if ! munge -n >/dev/null 2>&1; then
  su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid"
  for _ in $(seq 20); do [ -s /run/munge/munged.pid ] && break; sleep 0.25; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
fi

# MariaDB, started directly (no systemd here), on loopback only
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
if ! mysqladmin ping >/dev/null 2>&1; then
  setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --bind-address=127.0.0.1 \
    --socket=/run/mysqld/mysqld.sock --pid-file=/run/mysqld/mysqld.pid \
    --log-error="$STATE/log/mariadb.err" >/dev/null 2>&1 &
  for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
  cp /run/mysqld/mysqld.pid "$STATE/mariadb.pid"
fi
mysql -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'studyflow';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

cat > /etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=studyflow
StorageLoc=slurm_acct_db
CONF
chmod 600 /etc/slurm/slurmdbd.conf
if ! { [ -f "$STATE/slurmdbd.pid" ] && kill -0 "$(cat "$STATE/slurmdbd.pid")" 2>/dev/null; }; then
  /usr/sbin/slurmdbd
fi
# slurmctld exits at once if slurmdbd does not answer yet: wait for its port
for _ in $(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.25; done

if scontrol ping 2>/dev/null | grep -q "is UP"; then
  sinfo; echo "slurm already up"; exit 0
fi
# No cgroups in this sandbox: linuxproc tracking, no task plugin, and no cgroup.conf at all
rm -f /etc/slurm/cgroup.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=studyflow
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
MinJobAge=86400
KillWait=5
InactiveLimit=0
MailProg=/bin/true
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
/usr/sbin/slurmctld -c
/usr/sbin/slurmd
for _ in $(seq 30); do [ "$(sinfo -h -o %T 2>/dev/null || true)" = idle ] && break; sleep 1; done
sacctmgr -i add account studyflow >/dev/null 2>&1 || true
sacctmgr -i add user root account=studyflow >/dev/null 2>&1 || true
sinfo
echo "slurm up in $(( $(date +%s) - started )) s"
