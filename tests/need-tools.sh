#!/usr/bin/env bash
# The system tools `make test` and `make demo` need besides Python and Node.js: OpenSSH's sshd
# (each emulated instance runs one) and shellcheck (the lint of our shell scripts).
# On Debian or Ubuntu a missing one is installed with apt-get, as root or through sudo;
# anywhere else this stops with one line that says what to install.
#
# EC2_EXECUTOR_SBIN (default /usr/sbin:/usr/local/sbin:/sbin) is where sshd is looked for
# besides PATH, and EC2_EXECUTOR_OS_RELEASE (default /etc/os-release) says which system this
# is; the tests set both.
set -euo pipefail

sbin="${EC2_EXECUTOR_SBIN-/usr/sbin:/usr/local/sbin:/sbin}"
os_release="${EC2_EXECUTOR_OS_RELEASE:-/etc/os-release}"

missing=()
PATH="$PATH${sbin:+:$sbin}" command -v sshd >/dev/null 2>&1 || missing+=(openssh-server)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)
[ "${#missing[@]}" -eq 0 ] && exit 0

wanted="${missing[*]}"
fail() {
    echo "$1" >&2
    exit 1
}

system=""
if [ -r "$os_release" ]; then
    # shellcheck disable=SC1090  # the system's own description, read as shell by design
    system="$(. "$os_release" && echo "${ID:-} ${ID_LIKE:-}")"
fi
case " $system " in
    *" debian "* | *" ubuntu "*) ;;
    *) fail "The tests and the demo need: $wanted (OpenSSH's sshd and shellcheck); install them with your system's package manager, then run make again." ;;
esac
command -v apt-get >/dev/null 2>&1 || fail "apt-get not found: install $wanted, then run make again."

as_root=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 ||
        fail "Installing $wanted needs root: run 'apt-get install $wanted' as root, then make again."
    as_root=(sudo)
fi

echo "Installing $wanted (the tests and the demo need them) with apt-get ..." >&2
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    fail "'apt-get update' failed: install $wanted yourself, then run make again."
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends --no-upgrade "${missing[@]}" ||
    fail "'apt-get install $wanted' failed: install them yourself, then run make again."
