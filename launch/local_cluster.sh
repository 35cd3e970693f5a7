#!/usr/bin/env bash
# Runs one advjax job as N processes on this machine, the way a cluster runs it on N hosts.
#
#   bash launch/local_cluster.sh N <launch/main.py arguments>
#   bash launch/local_cluster.sh 2 --config configs/mnist_fast.py:smoke --workdir runs/smoke2
#
# Each process gets --coordinator=127.0.0.1:<free port> --num_processes=N --process_id=i
# and K virtual CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=K; K is
# ADVJAX_DEVICES_PER_PROCESS, 2 unless set). Process 0 prints as usual, the others with a
# "[i] " prefix. The script waits for all of them and exits with the first non-zero exit
# code if any fails; when one fails, the others stop by themselves (JAX's coordination
# service), and any still running after ADVJAX_PEER_GRACE seconds (default 90) are
# terminated. Rerunning the same command resumes from the last checkpoint.
set -u

if [[ $# -lt 1 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash launch/local_cluster.sh N <launch/main.py arguments>" >&2
  exit 2
fi
num_processes=$1
shift

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
if [[ ! -x "$python" ]]; then
  echo "advjax: error: no Python at $python; run 'bash launch/setup.sh' or set PYTHON" >&2
  exit 2
fi
devices=${ADVJAX_DEVICES_PER_PROCESS:-2}
grace=${ADVJAX_PEER_GRACE:-90}
port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
coordinator="127.0.0.1:$port"
# Only the CPU backend: one process per host, each with its own virtual devices.
xla_flags="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"

pids=()
for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    XLA_FLAGS="$xla_flags" JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} \
      "$python" "$repo/launch/main.py" "$@" --coordinator="$coordinator" \
      --num_processes="$num_processes" --process_id="$i" &
  else
    XLA_FLAGS="$xla_flags" JAX_PLATFORMS=${JAX_PLATFORMS:-cpu} ADVJAX_PROGRESS=0 \
      "$python" "$repo/launch/main.py" "$@" --coordinator="$coordinator" \
      --num_processes="$num_processes" --process_id="$i" \
      > >(sed -u "s/^/[$i] /") 2> >(sed -u "s/^/[$i] /" >&2) &
  fi
  pids+=($!)
done

stop_all() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
}
trap 'stop_all; exit 130' INT TERM

status=0
running=("${!pids[@]}")
failed_at=""
while ((${#running[@]})); do
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      still+=("$i")
      continue
    fi
    wait "${pids[$i]}"
    rc=$?
    if ((rc != 0)); then
      echo "advjax: error: process $i of $num_processes exited with code $rc" >&2
      if ((status == 0)); then
        status=$rc
        failed_at=$SECONDS
      fi
    fi
  done
  running=("${still[@]+"${still[@]}"}")
  if ((status != 0 && ${#running[@]})); then
    signal=""
    ((SECONDS - failed_at > grace)) && signal=TERM
    ((SECONDS - failed_at > grace + 15)) && signal=KILL
    if [[ -n "$signal" ]]; then
      echo "advjax: error: sending SIG$signal to processes ${running[*]} (a process failed ${grace}s ago)" >&2
      for i in "${running[@]}"; do kill -"$signal" "${pids[$i]}" 2>/dev/null; done
    fi
  fi
  ((${#running[@]})) && sleep 1
done
if ((status != 0)); then
  echo "advjax: error: the run failed; run the same command again to resume from the last checkpoint" >&2
fi
exit "$status"
