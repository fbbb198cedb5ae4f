#!/usr/bin/env bash
# The Debian packages some tests use, installed when missing: systemd-container, mmdebstrap and
# nftables for the real guests (tests marked `guest`); cloud-init for the user data's schema
# check; iproute2 for the guests' bridge and namespaces. (sshd and shellcheck, which every run
# needs, are tests/need-tools.sh's.) Without root or apt-get it only says what is missing: the
# tests that need it are then skipped, each saying why; on CI (CI=true) it fails instead.
set -euo pipefail
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
need=()
have systemd-nspawn || need+=(systemd-container)
have mmdebstrap || need+=(mmdebstrap)
have nft || need+=(nftables)
have cloud-init || need+=(cloud-init)
have ip || need+=(iproute2)
[ ${#need[@]} -gt 0 ] || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "test-deps: not installed: ${need[*]} (Debian packages); tests needing them are skipped" >&2
  [ "${CI-}" != true ] || { echo "test-deps: CI=true: install them as root" >&2; exit 1; }
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
