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
# The first VM fetches Debian's cloud kernel with apt-get download: the
# package lists must know it (fresh containers have none).
lists_ok=1
apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1 || lists_ok=0
if [ -n "$need" ] || [ "$lists_ok" = 0 ]; then
	if [ "$(id -u)" != 0 ]; then
		if [ -z "$need" ]; then
			echo "deps: apt's lists lack linux-image-cloud-amd64; run 'sudo apt-get update' or the first VM cannot fetch its kernel" >&2
			exit 0
		fi
		echo "deps: missing packages:$need — run as root or: sudo apt-get install --no-install-recommends$need" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	if [ -n "$need" ]; then
		echo "deps: installing$need"
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $need >/dev/null
	fi
fi
