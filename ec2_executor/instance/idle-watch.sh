#!/usr/bin/env bash
# The instance's idle power-off, started by bootstrap.sh when the stack's IdleMinutes > 0:
# a dispatcher that died leaves nothing running. Usage: idle-watch.sh PREFIX LIMIT_SECONDS
# Idle means: no task process alive (worker/busy holds its pid) for LIMIT seconds since the
# last task ended (worker/idle, touched by the fork server) or the bootstrap finished (ready).
# Then it writes PREFIX/poweroff and runs $EC2_EXECUTOR_POWEROFF (default: power off; the
# instance terminates itself, per the stack's InstanceInitiatedShutdownBehavior). A test
# harness sets a command that does nothing and honours the file instead.
set -uo pipefail
prefix=${1:?prefix} limit=${2:?seconds}
off=${EC2_EXECUTOR_POWEROFF:-'systemctl poweroff || shutdown -P now'}
tick=$((limit < 120 ? 1 : 30))
while sleep "$tick"; do
  busy=$(cat "$prefix/worker/busy" 2>/dev/null) && kill -0 "$busy" 2>/dev/null && continue
  now=$(date +%s)
  last=$(stat -c %Y "$prefix/worker/idle" "$prefix/ready" 2>/dev/null | sort -n | tail -n 1)
  [ $((now - ${last:-$now})) -ge "$limit" ] || continue
  echo "$(date -u +%FT%TZ) no task for $limit s: powering off" | tee "$prefix/poweroff"
  bash -c "$off"
  exit 0
done
