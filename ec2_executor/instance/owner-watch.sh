#!/usr/bin/env bash
# owner-watch.sh PREFIX LIMIT_SECONDS SSH_PORT: power off (README, "When the dispatcher dies")
# once no TCP connection to sshd has been established for LIMIT seconds. As idle-watch.sh:
# writes PREFIX/poweroff, runs $EC2_EXECUTOR_POWEROFF. EC2_EXECUTOR_SSHD_ADDRESS: tests only.
set -uo pipefail
prefix=${1:?prefix} limit=${2:?seconds} port=${3:?port}
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
# Seconds since boot: a clock that NTP's step at boot does not move.
uptime() { local up; read -r up _ </proc/uptime && echo "${up%.*}"; }

last=$(uptime) present=''
while sleep "$tick"; do
  now=$(uptime)
  connected; status=$?
  if [ "$status" != 1 ]; then  # only a definite absence counts
    [ -n "$present" ] || echo "$(date -u +%FT%TZ) owner connected"
    last=$now present=1
    continue
  fi
  [ -z "$present" ] || echo "$(date -u +%FT%TZ) owner's connection gone; power-off in $limit s"
  present=''
  [ $((now - last)) -ge "$limit" ] || continue
  echo "$(date -u +%FT%TZ) no connection from the owner for $limit s: powering off" |
    tee "$prefix/poweroff"
  bash -c "$off"
  exit 0
done
