#!/usr/bin/env bash
# Readies a bootstrapped instance for CreateImage; `ec2-executor bake` runs it over SSH as
# `bash -s -- [PKG ...]`. Installs the extra packages into the task venv, then stops the warm
# worker and removes what belongs to this instance only, so that an instance of the image
# runs its bootstrap's fast path, starts a worker of its own and is a machine of its own:
# - the bootstrap's state, logs and pid files (a stale idle.pid would have a new instance's
#   bootstrap kill whatever process got that number);
# - the login keys cloud-init authorised (the baker's client key);
# - the SSH host keys: the pinned one and any sshd generated. cloud-init writes each new
#   instance's pinned key and sshd drop-in from its user data before sshd starts, and
#   generates the key types it is told to;
# - cloud-init's instance state (as `cloud-init clean --logs`), so that it runs its
#   per-instance modules (keys, files, runcmd) on the next boot even where the image keeps
#   the instance id;
# - /etc/machine-id, emptied rather than removed: systemd then makes a new one at first boot.
# EC2_EXECUTOR_ROOT (default /): the root whose system files (/etc, /home, /root, /var) it
# cleans; the emulated instances of the tests, which run on the test machine itself, set their
# own. EC2_EXECUTOR_PREFIX: the bootstrap's directory (default /opt/ec2-executor).
set -euo pipefail
p=${EC2_EXECUTOR_PREFIX:-/opt/ec2-executor}
r=${EC2_EXECUTOR_ROOT:-}
r=${r%/}
root=()
[ "$(id -u)" = 0 ] || root=(sudo -n)
py=$(tail -n 1 "$p/ready")
if [ $# -gt 0 ]; then "$py" -m pip install --no-input "$@"; fi
if pid=$(cat "$p/worker/pid" 2>/dev/null); then kill "$pid" 2>/dev/null || true; fi
# cloud-final runs the bootstrap: let it end before cloud-init's state goes.
if [ -z "$r" ] && command -v cloud-init >/dev/null; then
  timeout 300 cloud-init status --wait >/dev/null 2>&1 || true
fi
"${root[@]}" rm -rf "$p/worker" "$p/ready" "$p/failed" "$p/bootstrap.log" "$p/cache" \
  "$p"/owner.* "$p"/*.pid "$p"/*.log "$p/.lock" "$p/poweroff"
# Every login's authorised keys; the next instance's come from its user data.
"${root[@]}" find "$r/root" "$r/home" -maxdepth 3 -path '*/.ssh/authorized_keys' -delete 2>/dev/null || true
"${root[@]}" rm -f "$r"/etc/ssh/ssh_host_*_key "$r"/etc/ssh/ssh_host_*_key.pub \
  "$r/etc/ssh/ec2_executor_host_ed25519_key" "$r/etc/ssh/sshd_config.d/00-ec2-executor.conf"
# All of /var/lib/cloud but the seed (a datasource's, not the instance's), and the logs.
"${root[@]}" find "$r/var/lib/cloud" -mindepth 1 -maxdepth 1 ! -name seed -exec rm -rf {} + 2>/dev/null || true
"${root[@]}" rm -f "$r"/var/log/cloud-init*.log
[ ! -e "$r/etc/machine-id" ] || "${root[@]}" truncate -s 0 "$r/etc/machine-id"
# D-Bus's copy, where it is a file of its own rather than a link to /etc/machine-id.
[ -L "$r/var/lib/dbus/machine-id" ] || "${root[@]}" rm -f "$r/var/lib/dbus/machine-id"
sync
