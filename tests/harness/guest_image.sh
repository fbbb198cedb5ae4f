#!/usr/bin/env bash
# Builds the guests' root filesystem into TARGET: Debian bookworm with systemd, Debian's
# cloud-init, OpenSSH and Python, plus the Python packages in REQUIREMENTS (what the bootstrap
# would install, like a baked image: guests have no network). Apt sources: this machine's.
# usage: guest_image.sh TARGET PYTHON REQUIREMENTS CONSTRAINTS
set -euo pipefail
target=$1 python=$2 requirements=$3 constraints=$4
sources=
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list; do [ -f "$f" ] && sources=${sources:-$f}; done
[ -n "$sources" ] || { echo "guest_image.sh: no apt sources on this machine" >&2; exit 1; }
packages=systemd,systemd-sysv,dbus,libpam-systemd,cloud-init,openssh-server,locales,sudo
packages+=,python3,python3-venv,iproute2,procps

# Recommends stay out: one of them edits /etc/nsswitch.conf.
mmdebstrap --quiet --variant=apt --aptopt='APT::Install-Recommends "false"' \
  --include="$packages" bookworm "$target" "$sources"
# Nothing of this machine's: no resolver, no host keys (cloud-init gives the guest its own).
rm -rf "$target"/etc/resolv.conf "$target"/etc/ssh/ssh_host_*_key* \
  "$target"/var/cache/apt/archives/*.deb "$target"/var/lib/apt/lists/*
printf '127.0.0.1 localhost\n::1 localhost\n' >"$target/etc/hosts"
echo "en_US.UTF-8 UTF-8" >"$target/etc/locale.gen"
chroot "$target" locale-gen >/dev/null
cat >"$target/etc/cloud/cloud.cfg.d/90-ec2-executor-tests.cfg" <<'CFG'
# The test guests: NoCloud seed only, the address set by the harness, an EC2-like default user.
datasource_list: [NoCloud, None]
network: {config: disabled}
system_info:
  default_user:
    name: ec2-user
    lock_passwd: true
    gecos: EC2 Default User
    groups: [adm, systemd-journal]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
CFG
# Python packages from this machine's pip (same Python minor and libc as the guest's).
"$python" -m pip install --quiet --no-warn-script-location --disable-pip-version-check \
  --target "$target/usr/local/lib/python3.11/dist-packages" -r "$requirements" -c "$constraints"
