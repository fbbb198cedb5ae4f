#!/usr/bin/env bash
# The task's one command on the instance. Lives beside bootstrap.sh and runner.py, in the
# bootstrap's prefix.
#   run-task.sh TASK_DIR WAIT_TICKS (tenths of a second)
#     stdin: the pickled task; stdout: the result envelope (a pickle), or lines starting with
#     "ec2-executor:" when it exits 3 (bootstrap failed) or 4 (bootstrap not ready in time).
#     Exit 5: the payload could not be written; 6: the warm worker died with the task; 9: the
#     task's process ended without a result (its status on stderr). Every status is named in
#     ec2_executor/protocol.py (Exit), which a test holds to this script.
#     The task's directory is removed once its result is on stdout.
#   run-task.sh --check       exit 0 when the bootstrap is done and the warm worker lives, else 7
#   run-task.sh --kill TASK_DIR   kill the task's processes; prints "killed" once they are gone,
#     exit 8 when one is still alive
# While the task runs, a spot interruption notice (PREFIX/spot-notice, from owner-watch.sh) is
# said at once on stderr, and the task's process group gets SIGTERM 30 s before the instance
# ends, so that it can checkpoint (ec2_executor/spot.py reads both lines).
set -uo pipefail
mark='ec2-executor:' p=${0%/*}
w=$p/worker

# A worker that died but was not reaped yet (a zombie) answers kill -0: read its state.
alive() {
  pid=$(cat "$w/pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null &&
    [ "$(sed 's/.*) \(.\).*/\1/' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

if [ "${1-}" = --check ]; then
  [ -f "$p/ready" ] || { echo "$mark the bootstrap is not done"; exit 7; }
  alive || { echo "$mark the warm worker is not running"; exit 7; }
  exit 0
fi
if [ "${1-}" = --kill ]; then
  d=${2:?task directory} i=0
  if task=$(cat "$d/pid" 2>/dev/null); then
    kill -KILL -- "-$task" 2>/dev/null || kill -KILL "$task" 2>/dev/null
    # Gone once the worker has reaped it (a zombie still answers kill -0).
    while kill -0 "$task" 2>/dev/null; do
      [ "$i" -lt 100 ] || { echo "$mark process $task still alive"; exit 8; }
      sleep 0.1; i=$((i + 1))
    done
  fi
  echo killed; exit 0
fi

d=${1:?task directory} ticks=${2:?wait ticks} t0=$EPOCHREALTIME
mkdir -p "$d" && cat >"$d/payload.pkl" || exit 5

# Checks every 0.1 s: a fast electron reaches the instance just before its bootstrap ends.
i=0 py=''
while [ "$i" -lt "$ticks" ]; do
  if [ -f "$p/ready" ]; then py=$(tail -n 1 "$p/ready"); break; fi
  if [ -f "$p/failed" ]; then
    echo "$mark failed"; cat "$p/failed"; tail -n 40 "$p/bootstrap.log"; exit 3
  fi
  sleep 0.1; i=$((i + 1))
done
if [ -z "$py" ]; then echo "$mark timed out"; tail -n 40 "$p/bootstrap.log" 2>/dev/null; exit 4; fi
# The executor splits this wait off as the "bootstrap" phase ($EPOCHREALTIME: bash 5).
echo "$mark bootstrap waited $t0 $EPOCHREALTIME" >&2

# The notice's relay. Its waits hold none of the session's streams, so that once it is killed
# (on exit) the command's end reaches the executor at once.
relay() {
  local at action seen end wait task
  until [ -s "$p/spot-notice" ]; do sleep 0.5 2>/dev/null; done
  read -r at action seen <"$p/spot-notice"
  echo "$mark spot interruption notice at $seen: $action at $at" >&2
  end=$(date -d "$at" +%s 2>/dev/null) || end=$(($(date +%s) + 120))
  wait=$((end - 30 - $(date +%s)))
  [ "$wait" -le 0 ] || sleep "$wait" 2>/dev/null
  task=$(cat "$d/pid" 2>/dev/null) || return 0
  echo "$mark spot: sent SIGTERM to the task at $(date -u +%FT%TZ), 30 s before $at" >&2
  kill -TERM -- "-$task" 2>/dev/null || kill -TERM "$task" 2>/dev/null
}
relay </dev/null >/dev/null &
relay_pid=$!
trap 'kill "$relay_pid" 2>/dev/null' EXIT

# The warm worker's FIFOs are opened read-write, so no open blocks; a dead worker is noticed
# within a second, and the task is then not run a second time. Lines on `done` name their
# task: one left by a cancelled task is skipped.
# `busy` (this command's pid until the worker puts the task's) holds off the idle power-off.
if alive && exec 4<>"$w/go" 5<>"$w/done"; then
  echo $$ >"$w/busy"; echo "$d" >&4; echo "$mark warm worker $pid" >&2
  until read -r -t 1 _ finished code <&5 && [ "$finished" = "$d" ]; do
    alive || { echo "$mark the worker died; see $w/worker.log" >&2; exit 6; }
  done
  if [ ! -f "$d/result.pkl" ]; then  # the task's process ended before it wrote its envelope
    how="exit status $code"; [ "${code#-}" = "$code" ] || how="killed by signal ${code#-}"
    echo "$mark the task's process ended without a result ($how: out of memory, or killed" \
      "on the instance?); $w/worker.log ends:" >&2
    tail -n 20 "$w/worker.log" >&2; rm -rf "$d"; exit 9
  fi
  cat "$d/result.pkl"; status=$?
  rm -rf "$d"; exit "$status"
fi
# No worker waiting: a fresh interpreter, which also writes the envelope to stdout.
echo $$ >"$d/pid"
PATH="${py%/*}:$PATH" "$py" "$p/runner.py" "$d/payload.pkl" "$d/result.pkl" && rm -rf "$d"
