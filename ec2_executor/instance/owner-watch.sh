#!/usr/bin/env bash
# owner-watch.sh PREFIX LIMIT_SECONDS SSH_PORT [spot]: power off (README, "When the dispatcher
# dies") once no TCP connection to sshd has been established for LIMIT seconds. As
# idle-watch.sh: writes PREFIX/poweroff, runs $EC2_EXECUTOR_POWEROFF. EC2_EXECUTOR_SSHD_ADDRESS:
# tests only. With `spot`, it also polls the instance metadata (IMDSv2) every 5 s for EC2's
# spot interruption notice, and writes PREFIX/spot-notice ("TIME ACTION SEEN") once one is out:
# run-task.sh tells the executor and signals the task (README, "Spot and cost").
# EC2_EXECUTOR_METADATA: the metadata endpoint (default http://169.254.169.254; tests set a
# stand-in on the instance's own loopback).
set -uo pipefail
prefix=${1:?prefix} limit=${2:?seconds} port=${3:?port} spot=${4:-}
off=${EC2_EXECUTOR_POWEROFF:-'systemctl poweroff || shutdown -P now'}
tick=$((limit < 120 ? 1 : 5))
exec 8>>"$prefix/owner.lock"  # one watch per instance, should the bootstrap run again
if command -v flock >/dev/null; then flock -n 8 || exit 0; fi
end=$(printf ':%04X' "$port")
if [ -n "${EC2_EXECUTOR_SSHD_ADDRESS:-}" ]; then
  IFS=. read -r a b c d <<<"$EC2_EXECUTOR_SSHD_ADDRESS"
  end=$(printf '%02X%02X%02X%02X%s' "$d" "$c" "$b" "$a" "$end")  # as a little-endian kernel prints it
fi
tables=(/proc/net/tcp)
[ ! -r /proc/net/tcp6 ] || tables+=(/proc/net/tcp6)

# 0: a connection to sshd is established (state 01); 1: none; else the check failed.
connected() {
  awk -v end="$end" 'FNR > 1 && $4 == "01" && substr($2, length($2) - length(end) + 1) == end {
    found = 1; exit } END { exit found ? 0 : 1 }' "${tables[@]}"
}
# Hundredths of a second since boot (/proc/uptime has two decimals): a clock that NTP's step
# at boot does not move, fine enough that the limit is not cut short by a rounding.
uptime() { local up; read -r up _ </proc/uptime && echo $((10#${up/./})); }

metadata=${EC2_EXECUTOR_METADATA:-http://169.254.169.254}
[[ $metadata =~ ^http://([^/:]+)(:([0-9]+))?(/.*)?$ ]] || { echo "bad metadata URL $metadata"; spot=''; }
md_host=${BASH_REMATCH[1]-} md_port=${BASH_REMATCH[3]:-80} md_base=${BASH_REMATCH[4]-}
# One HTTP request (bash's /dev/tcp: some images have no curl): prints the body of a 200
# answer, fails on anything else. Usage: http_request HOST PORT METHOD PATH HEADER
http_request() {
  local status line
  exec 3<>"/dev/tcp/$1/$2" || return 1
  printf '%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
    "$3" "$4" "$1" "$5" >&3
  IFS= read -r status <&3 && [[ $status =~ ^HTTP/1\.[01]\ 200 ]] || return 1
  while IFS= read -r line <&3 && [ -n "${line%$'\r'}" ]; do :; done
  cat <&3
}
# METHOD PATH HEADER to the metadata endpoint, under a deadline: the watch never hangs here.
metadata_call() {
  timeout 3 bash -c "$(declare -f http_request); http_request \"\$@\"" _ \
    "$md_host" "$md_port" "$1" "$md_base$2" "$3" 2>/dev/null
}
# The notice, once: {"action": "terminate", "time": "2026-01-01T12:02:00Z"} (404 before).
spot_notice() {
  local token body action at
  token=$(metadata_call PUT /latest/api/token "X-aws-ec2-metadata-token-ttl-seconds: 300") || return 0
  body=$(metadata_call GET /latest/meta-data/spot/instance-action "X-aws-ec2-metadata-token: $token") || return 0
  [[ $body =~ \"action\"[[:space:]]*:[[:space:]]*\"([a-z]+)\" ]] && action=${BASH_REMATCH[1]} || return 0
  [[ $body =~ \"time\"[[:space:]]*:[[:space:]]*\"([0-9TZ:.-]+)\" ]] && at=${BASH_REMATCH[1]} || return 0
  echo "$at $action $(date -u +%FT%TZ)" >"$prefix/.spot-notice.$$" && mv -f "$prefix/.spot-notice.$$" "$prefix/spot-notice"
  echo "$(date -u +%FT%TZ) spot interruption notice: $action at $at"
  spot=''  # said; EC2 acts on it
}

last=$(uptime) present='' next_spot=0
while sleep "$tick"; do
  now=$(uptime)
  if [ -n "$spot" ] && [ "$now" -ge "$next_spot" ]; then spot_notice; next_spot=$((now + 500)); fi
  connected; status=$?
  if [ "$status" != 1 ]; then  # only a definite absence counts
    [ -n "$present" ] || echo "$(date -u +%FT%TZ) owner connected"
    last=$now present=1
    continue
  fi
  [ -z "$present" ] || echo "$(date -u +%FT%TZ) owner's connection gone; power-off in $limit s"
  present=''
  [ $((now - last)) -ge $((limit * 100)) ] || continue
  echo "$(date -u +%FT%TZ) no connection from the owner for $limit s: powering off" |
    tee "$prefix/poweroff"
  bash -c "$off"
  exit 0
done
