#!/usr/bin/env bash
# One test guest: `systemd-nspawn --boot` over the image (read-only; a throw-away overlay on
# top), in the network namespace made for it, the NoCloud seed bound in. This machine's PID 1
# is not systemd, so nothing makes cgroups for the guest: it gets a child of each of this
# process's cgroups (name=systemd and cgroup2 for the guest's systemd; memory and cpuacct for
# the figures in bench/guests.py). `clean NAME` removes them once the guest has gone.
# SYSTEM_CONF: a drop-in for the guest's systemd (its services' environment, for the tests).
# `writable` as the last argument of `start` boots IMAGE itself, writing into it (a root the
# test prepares, never the cached image): what the guest leaves there outlives it.
# usage: guest_run.sh start NAME IMAGE NETNS SEED_DIR SYSTEM_CONF [writable] | guest_run.sh clean NAME
set -euo pipefail
action=$1 name=$2

cgroup_dirs() {  # this process's cgroup in each hierarchy that matters, plus /NAME
  local controllers path mount
  while IFS=: read -r _ controllers path; do
    case $controllers in
      '') mount=/sys/fs/cgroup; [ ! -d /sys/fs/cgroup/unified ] || mount=/sys/fs/cgroup/unified ;;
      name=systemd) mount=/sys/fs/cgroup/systemd ;;
      memory | cpuacct | cpu,cpuacct) mount=/sys/fs/cgroup/$controllers ;;
      *) continue ;;
    esac
    [ ! -d "$mount" ] || echo "$mount${path%/}/$name"
  done </proc/self/cgroup
}

case $action in
start)
  image=$3 netns=$4 seed=$5 conf=$6 volatile=(--volatile=overlay)
  [ "${7:-}" != writable ] || volatile=()
  for dir in $(cgroup_dirs); do mkdir -p "$dir" && echo $$ >"$dir/cgroup.procs"; done
  exec systemd-nspawn --quiet --boot --keep-unit --register=no --machine="$name" \
    --directory="$image" "${volatile[@]}" --network-namespace-path="$netns" \
    --bind-ro="$seed:/var/lib/cloud/seed/nocloud" --console=read-only \
    --bind-ro="$conf:/etc/systemd/system.conf.d/90-ec2-executor-tests.conf" \
    --resolv-conf=off --timezone=off --link-journal=no
  ;;
clean)  # deepest first: the guest's systemd made its own cgroups inside
  for dir in $(cgroup_dirs); do
    [ ! -d "$dir" ] || find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  ;;
*) echo "usage: $0 start NAME IMAGE NETNS SEED_DIR SYSTEM_CONF [writable] | clean NAME" >&2; exit 2 ;;
esac
