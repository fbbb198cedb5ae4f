#!/usr/bin/env bash
# Readies a bootstrapped instance for CreateImage; `ec2-executor bake` runs it over SSH as
# `bash -s -- [PKG ...]`. Installs the extra packages into the task venv, then stops the warm
# worker and removes what belongs to this instance only, so that an instance of the image
# runs its bootstrap's fast path and starts a worker of its own.
set -euo pipefail
p=${EC2_EXECUTOR_PREFIX:-/opt/ec2-executor}
root=()
[ "$(id -u)" = 0 ] || root=(sudo -n)
py=$(tail -n 1 "$p/ready")
if [ $# -gt 0 ]; then "$py" -m pip install --no-input "$@"; fi
if pid=$(cat "$p/worker/pid" 2>/dev/null); then kill "$pid" 2>/dev/null || true; fi
"${root[@]}" rm -rf "$p/worker" "$p/ready" "$p/failed" "$p/bootstrap.log" "$p/cache" \
  "$p"/owner.* "$p"/idle.pid "$p/poweroff"
sync
