#!/bin/sh
# Installs what ember needs on a Debian 12 host, only what is missing.
# Used by `make run` and `make test`; safe to run again.
set -eu
need=""
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have qemu-system-x86_64 || need="$need qemu-system-x86"
have qemu-img || need="$need qemu-utils"
# ldd succeeds only on a dynamic binary; the guest image needs the static one.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then need="$need busybox-static"; fi
have mkfs.ext4 || need="$need e2fsprogs"
have debugfs || need="$need e2fsprogs"
have apt-get || { echo "deps: apt-get not found; install qemu-system-x86 qemu-utils busybox-static e2fsprogs by hand" >&2; exit 1; }
have dpkg-deb || need="$need dpkg"
# ip netns isolates the tap-networking tests (see TESTING.md's network rule).
have ip || need="$need iproute2"
if [ -n "$need" ]; then
	if [ "$(id -u)" != 0 ]; then
		echo "deps: missing packages:$need — run as root or: sudo apt-get install --no-install-recommends$need" >&2
		exit 1
	fi
	echo "deps: installing$need"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# shellcheck disable=SC2086
	apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
