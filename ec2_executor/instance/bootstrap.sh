#!/usr/bin/env bash
# Builds $PREFIX/venv (Python minor + pinned covalent/cloudpickle); writes $PREFIX/ready
# (venv python path) or $PREFIX/failed (reason), then starts runner.py (found beside this
# script) as a warm worker in $PREFIX/worker. EC2_EXECUTOR_PREFIX: default prefix.
# EC2_EXECUTOR_BOOTSTRAP_OFFLINE=1 skips package-manager/uv installs (for tests).
# --idle-minutes N > 0 starts idle-watch.sh: the instance powers off after N minutes plus a
# 2-minute grace without a task (EC2_EXECUTOR_IDLE_SECONDS replaces both, for tests).
# --orphan-minutes N > 0 starts owner-watch.sh (EC2_EXECUTOR_ORPHAN_SECONDS replaces N);
# --spot true makes it watch for the spot interruption notice too.
set -euo pipefail
umask 022
PY='' COV='' CP='' RUN_USER='' IDLE=0 ORPHAN=0 PORT=22 SPOT=false BAD=''
PREFIX=${EC2_EXECUTOR_PREFIX:-/opt/ec2-executor}
while [ $# -gt 0 ]; do
  case $1 in
    --python) PY=${2-} ;; --covalent) COV=${2-} ;; --cloudpickle) CP=${2-} ;;
    --user) RUN_USER=${2-} ;; --prefix) PREFIX=${2-} ;; --idle-minutes) IDLE=${2-} ;;
    --orphan-minutes) ORPHAN=${2-} ;; --ssh-port) PORT=${2-} ;; --spot) SPOT=${2-} ;;
    *) BAD=${BAD:-"unknown argument '$1'"}; shift; continue ;;
  esac
  shift $(($# > 1 ? 2 : 1))
done
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "${PREFIX:?empty prefix}" && cd "$PREFIX" && PREFIX=$PWD || exit 2
VENV=$PREFIX/venv VPY=$PREFIX/venv/bin/python STEP=args REASON=''
exec 3>&2 >>"$PREFIX/bootstrap.log" 2>&1
trap 'on_exit $?' EXIT
trap 'REASON="step $STEP interrupted"; exit 1' INT TERM HUP
on_exit() {
  [ "$1" = 0 ] && return
  rm -f "$PREFIX/ready"
  REASON=${REASON:-"step $STEP failed (exit $1)"}
  put failed "$REASON"
  log "FAILED: $REASON"
  echo "bootstrap failed: $REASON (log: $PREFIX/bootstrap.log)" >&3
}
log() { printf '%s [%s] %s\n' "$(date -u +%FT%TZ)" "$STEP" "$*"; }
put() { printf '%s\n' "$2" >"$PREFIX/.$1.$$" && mv -f "$PREFIX/.$1.$$" "$PREFIX/$1"; }
fail() { REASON=$1; exit 1; }
ok() {
  rm -f "$PREFIX/failed"; start_worker; start_idle_watchdog
  STEP=ready; put ready "$VPY"; log "ready: $VPY"
}
# The task's interpreter, started before `ready` as the SSH user in a login shell (the
# environment of a login on the instance: /etc/profile.d, ~/.bash_profile), so that no task
# waits for one; without it the executor starts one per task. Descriptors 3 and 9
# (cloud-init's output, the lock) are closed: the worker outlives this script. Under systemd it
# is a unit of its own (ec2-executor-worker): cloud-final's end leaves it alone and power-off
# stops it like any service; elsewhere it gets a session of its own (setsid).
start_worker() {
  local w=$PREFIX/worker i=0 run as=() up=()
  STEP=worker
  [ -f "$HERE/runner.py" ] || { log "no runner.py beside the bootstrap; no warm worker"; return 0; }
  if [ -n "$RUN_USER" ] && [ "$RUN_USER" != "$(id -un)" ]; then
    id -u "$RUN_USER" >/dev/null 2>&1 || { log "no user '$RUN_USER'; no warm worker"; return 0; }
    as=(runuser -l "$RUN_USER" -s /bin/bash)
  fi
  [ ! -f "$w/pid" ] || kill "$(cat "$w/pid")" 2>/dev/null || true  # an earlier run's, idle
  if ! { rm -rf "$w" && mkdir -m 700 "$w" && mkfifo "$w/go" "$w/done"; }; then
    log "could not make $w; no warm worker"; return 0
  fi
  [ ${#as[@]} = 0 ] || chown -R "$RUN_USER": "$w"
  # shellcheck disable=SC2016  # $PATH: the login shell's, expanded there
  printf -v run 'PATH=%q:"$PATH" exec %q %q --serve %q' "$VENV/bin" "$VPY" "$HERE/runner.py" "$w"
  if [ -d /run/systemd/system ] && [ "$(id -u)" = 0 ] && command -v systemd-run >/dev/null; then
    systemctl stop ec2-executor-worker.service 2>/dev/null || true
    systemd-run --quiet --collect --unit=ec2-executor-worker --property=StandardInput=null \
      --property="StandardOutput=append:$w/worker.log" --property="StandardError=append:$w/worker.log" \
      -- "${as[@]:-bash}" -c "$run" 3>&- 9>&- || { log "systemd-run failed; no warm worker"; return 0; }
    up=(systemctl is-active --quiet ec2-executor-worker.service)
  else
    setsid "${as[@]:-bash}" -c "$run" </dev/null >>"$w/worker.log" 2>&1 3>&- 9>&- &
    up=(kill -0 $!)
  fi
  while [ ! -f "$w/pid" ] && [ "$i" -lt 200 ] && "${up[@]}" 2>/dev/null; do sleep 0.05; i=$((i+1)); done
  if [ -f "$w/pid" ]; then log "worker waiting (pid $(cat "$w/pid"))"; else log "no worker; see $w/worker.log"; fi
}

# The idle power-off (idle-watch.sh, beside this script), when --idle-minutes is above 0.
start_idle_watchdog() {
  local limit
  STEP=idle
  [ "$IDLE" -gt 0 ] && [ -f "$HERE/idle-watch.sh" ] || return 0
  limit=${EC2_EXECUTOR_IDLE_SECONDS:-$((IDLE * 60 + 120))}
  [ ! -f "$PREFIX/idle.pid" ] || kill "$(cat "$PREFIX/idle.pid")" 2>/dev/null || true
  rm -f "$PREFIX/poweroff"
  setsid bash "$HERE/idle-watch.sh" "$PREFIX" "$limit" </dev/null >>"$PREFIX/idle.log" 2>&1 3>&- 9>&- &
  echo $! >"$PREFIX/idle.pid"
  log "idle power-off after $limit s without a task (pid $!)"
}

# The orphan power-off (and, on spot, the interruption notice's watch), before anything that
# may hang.
start_owner_watchdog() {
  local limit=${EC2_EXECUTOR_ORPHAN_SECONDS:-$((ORPHAN * 60))} spot=''
  STEP=orphan
  [ "$ORPHAN" -gt 0 ] && [ -f "$HERE/owner-watch.sh" ] || return 0
  [ "$SPOT" != true ] || spot=spot
  setsid bash "$HERE/owner-watch.sh" "$PREFIX" "$limit" "$PORT" $spot </dev/null >>"$PREFIX/owner.log" 2>&1 3>&- 9>&- &
  log "power-off after $limit s with no connection to port $PORT${spot:+; watching for the spot interruption notice} (pid $!)"
}
[ -z "$BAD" ] || fail "usage: $BAD"
[[ $IDLE =~ ^[0-9]+$ ]] || fail "usage: --idle-minutes must be a whole number, got '$IDLE'"
[[ "$ORPHAN $PORT" =~ ^[0-9]+\ [0-9]+$ ]] || fail "usage: bad --orphan-minutes or --ssh-port"
start_owner_watchdog
[[ $PY =~ ^(3\.[0-9]+)(\.[0-9]+)?$ ]] || fail "usage: --python must be like 3.11, got '$PY'"
PY=${BASH_REMATCH[1]} WANT="${BASH_REMATCH[1]} $COV $CP"
if [ -z "$COV" ] || [ -z "$CP" ]; then fail "usage: --covalent and --cloudpickle are required"; fi

STEP=lock # a retry over SSH may race cloud-init
if command -v flock >/dev/null; then exec 9>"$PREFIX/.lock" && flock -w 1800 9; fi

# Sets HPY HCOV HCP HPIP from the venv ("none" = absent).
state() {
  read -r HPY HCOV HCP HPIP <<<"$("$VPY" -c 'import sys, importlib.metadata as m
def v(n):
    try: return m.version(n)
    except Exception: return "none"
print("%d.%d" % sys.version_info[:2], v("covalent"), v("cloudpickle"), v("pip"))' 2>/dev/null)" || true
}
STEP=check
state
if [[ "$HPY $HCOV $HCP" = "$WANT" && $HPIP != none ]]; then ok; exit 0; fi

rm -f "$PREFIX/ready"
log "start: python=$PY covalent=$COV cloudpickle=$CP user=$RUN_USER"
export HOME=${HOME:-/root} PIP_CACHE_DIR=$PREFIX/cache/pip UV_CACHE_DIR=$PREFIX/cache/uv \
  UV_PYTHON_INSTALL_DIR=$PREFIX/python PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
PATH=$PREFIX/uv/bin:$PATH
online() { [ "${EC2_EXECUTOR_BOOTSTRAP_OFFLINE:-0}" != 1 ]; }
online || export UV_OFFLINE=1
pkg() {
  online || return 1
  if command -v dnf >/dev/null; then dnf install -y "$@"
  elif command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update && apt-get -o DPkg::Lock::Timeout=600 install -y "$@"
  else return 1; fi
}
# AL2023 packages pip separately, Debian/Ubuntu venv (ensurepip).
pkg_py() { local x=venv; ! command -v dnf >/dev/null || x=pip; pkg "python$PY" "python$PY-$x"; }
find_py() {
  local p out
  p=$(command -v "python$PY") || return 1
  out=$("$p" -c 'import os, sys; print("%d.%d" % sys.version_info[:2], os.path.realpath(sys.executable))') || return 1
  [ "${out%% *}" = "$PY" ] && INTERP=${out#* }
}
get_uv() {
  command -v uv >/dev/null && return
  online || return 1
  # --target: stays under the prefix, bypasses PEP 668.
  local i=(-m pip install -q --target "$PREFIX/uv" uv)
  python3 "${i[@]}" || "python$PY" "${i[@]}" || { pkg python3-pip && python3 "${i[@]}"; }
}
uv_py() { get_uv && uv python install "$PY" && INTERP=$(uv python find "$PY"); }
mkvenv() {
  rm -rf "$VENV"
  { command -v uv >/dev/null && uv venv --seed --system-site-packages --python "$INTERP" "$VENV"; } ||
    { rm -rf "$VENV"; "$INTERP" -m venv --system-site-packages "$VENV"; }
}

STEP=python INTERP=''
find_py || { log "no python$PY on PATH; trying package manager"; pkg_py && find_py; } ||
  { log "trying uv"; uv_py; } || fail "no Python $PY found (PATH, package manager, uv)"
log "interpreter: $INTERP"

STEP=venv
if [ "$HPY" != "$PY" ] || [ "$HPIP" = none ]; then
  mkvenv || { pkg_py && mkvenv; } || { get_uv && mkvenv; } || fail "could not create venv with $INTERP"
fi

STEP=install
state  # an image that already has the versions (system site-packages) needs no install
if [[ "$HPY $HCOV $HCP" = "$WANT" ]]; then
  log "covalent and cloudpickle already present"
else
  get_uv || log "no uv; installing with pip"  # uv: seconds; pip: about a minute
  if command -v uv >/dev/null; then uv pip install --python "$VPY" "covalent==$COV" "cloudpickle==$CP"
  else "$VPY" -m pip install --no-input "covalent==$COV" "cloudpickle==$CP"; fi ||
    fail "installing covalent==$COV cloudpickle==$CP failed"
fi

STEP=verify
state
[[ "$HPY $HCOV $HCP" = "$WANT" && $HPIP != none ]] ||
  fail "version mismatch: want python/covalent/cloudpickle $WANT, found $HPY $HCOV $HCP (pip $HPIP)"

STEP=owner
if [ -n "$RUN_USER" ] && id -u "$RUN_USER" >/dev/null 2>&1; then chown -R "$RUN_USER": "$VENV"
else log "user '$RUN_USER' does not exist; venv stays owned by $(id -un)"; fi
rm -rf "$PREFIX/cache"
ok
