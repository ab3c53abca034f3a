#!/bin/bash
# make fresh-check: does the README's first command, `make run`, work on a
# fresh Debian 12 machine? A package installed by hand on the machine CI runs
# on (seen: nft) keeps CI green while every new user fails; this catches it.
#
# It builds a minimal Debian 12 root with mmdebstrap from the host's apt
# sources (cached in .cache/fresh-check/, keyed by the package list), extracts
# a fresh copy, copies Go in, clones the committed HEAD (not the working tree,
# like CI) and runs `make run` in it as root, chrooted in a private mount and
# PID namespace: the daemon and QEMU that `make run` starts die with it.
# The root has only what a fresh machine has (Go, git, gcc, make, apt,
# e2fsprogs), nothing ember's own install step is supposed to install.
# It shares the host's network namespace: apt reaches the Debian mirror, go
# the module proxy, and `make run` uses QEMU user-mode networking (loopback).
#
# Needs root. Environment:
#   FRESH_CHECK_BUDGET=900   seconds for the whole check (fails past it)
#   FRESH_CHECK_KVM=0        hide /dev/kvm from the root (test the TCG path)
#   FRESH_CHECK_MODCACHE=0   do not offer the host's Go module cache as a
#                            local proxy; download every module
#   FRESH_CHECK_KEEP=1       keep the root folder afterwards (for debugging)
#   GOPROXY, GOFLAGS, GOSUMDB, GONOSUMDB are passed through when set.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
t0=$SECONDS
budget=${FRESH_CHECK_BUDGET:-900}
cache=$repo/.cache/fresh-check
log=$cache/last.log
suite=bookworm
variant=apt
# What a fresh Debian 12 machine has: Go, git, gcc and make (README), and
# mkfs.ext4 from e2fsprogs. Never add a package here that
# ember's own install step should install: that would hide the bug this
# check exists to find.
packages="ca-certificates git gcc libc6-dev make e2fsprogs"

say() { echo "fresh-check: $*"; }
die() { echo "fresh-check: FAIL: $*" >&2; exit 1; }
elapsed() { local s=$((SECONDS - t0)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }
left() { local l=$((budget - (SECONDS - t0))); [ "$l" -gt 0 ] || l=1; echo "$l"; }

[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap, chroot and namespaces): sudo make fresh-check"
mkdir -p "$cache"
: >"$log"

# `make fresh-check` installs mmdebstrap first (make deps DEPS_FOR=fresh-check).
command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run 'make fresh-check' (its install step installs it) or apt-get install mmdebstrap"

# The host's active apt sources, as the root's.
sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] && grep -qv '^[[:space:]]*\(#\|$\)' "$f" && sources+=("$f")
done
[ ${#sources[@]} -gt 0 ] || die "no apt sources on this host (/etc/apt/sources.list{,.d})"

# The root tarball, cached by everything that shapes it; rebuilt after a week
# so it follows the archive.
key=$( { echo "$suite $variant $packages v1"; cat "${sources[@]}"; } | sha256sum | cut -c1-16)
tarball=$cache/root-$key.tar
if [ -f "$tarball" ] && [ -z "$(find "$tarball" -mtime +7)" ]; then
	say "using the cached Debian 12 root ($(basename "$tarball"))"
else
	say "building a minimal Debian 12 root with mmdebstrap ($variant + $packages)"
	rm -f "$cache"/root-*.tar "$cache"/root-*.tar.part
	if ! timeout "$(left)" mmdebstrap --quiet --mode=root --variant="$variant" --format=tar \
		--include="${packages// /,}" "$suite" "$tarball.part" "${sources[@]}" >>"$log" 2>&1; then
		tail -n 30 "$log" >&2
		die "mmdebstrap could not build the root (log: $log)"
	fi
	mv "$tarball.part" "$tarball"
	say "root built ($(du -h "$tarball" | cut -f1)) in $(elapsed)"
fi

# A fresh extraction every time, removed at the end whatever happens. The
# mounts live only in the namespace, which dies before this runs; the check
# on /proc/self/mountinfo is a belt for the braces of --one-file-system.
root=""
cleanup() {
	local rc=$?
	trap '' INT TERM # a second Ctrl-C must not leave half a root behind
	if [ -n "$root" ] && [ -d "$root" ]; then
		if [ "${FRESH_CHECK_KEEP:-0}" = 1 ]; then
			say "kept the root at $root"
		elif grep -q " $root[/ ]" /proc/self/mountinfo; then
			echo "fresh-check: $root still has mounts; not removing it" >&2
		else
			[ "$rc" = 0 ] || say "removing the root"
			rm -rf --one-file-system "$root"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'echo; say "interrupted"; exit 130' INT TERM
# Roots left by a run that was killed outright (no check lasts an hour).
for old in $(find "$cache" -maxdepth 1 -name 'root.*' -type d -mmin +60); do
	grep -q " $old[/ ]" /proc/self/mountinfo || rm -rf --one-file-system "$old"
done
root=$(mktemp -d "$cache/root.XXXXXX")
chmod 755 "$root"
tar -C "$root" --numeric-owner -xpf "$tarball"

goroot=$(go env GOROOT 2>/dev/null || echo /usr/local/go)
[ -x "$goroot/bin/go" ] || die "Go is not installed here ($goroot); a fresh machine has it in /usr/local/go"
rm -rf "$root/usr/local/go"
cp -a "$goroot" "$root/usr/local/go"

commit=$(git rev-parse --short HEAD)
git clone --quiet --no-local "$repo" "$root/root/ember"
say "cloned HEAD $commit (committed work only; local changes are not in it)"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/hosts "$root/etc/hosts" 2>/dev/null || true
# The CAs this host trusts beyond Debian's own (a TLS-inspecting proxy, as
# on these machines), so go reaches the module proxy as it does here: they
# are the machine's network set-up, not a package. In
# /usr/local/share/ca-certificates too, so a rebuilt bundle keeps them.
mkdir -p "$root/usr/local/share/ca-certificates"
extra=$(perl -e '
	local $/; my $re = qr/-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----/s;
	open my $h, "<", $ARGV[0] or exit; my @host = (<$h> =~ /($re)/g);
	open my $r, "<", $ARGV[1] or exit; my %have = map { $_ => 1 } (<$r> =~ /($re)/g);
	my $n = 0;
	for (@host) {
		next if $have{$_}++;
		$n++;
		open my $o, ">", "$ARGV[2]/fresh-check-host-$n.crt" or die; print $o "$_\n"; close $o;
		open my $b, ">>", $ARGV[1] or die; print $b "$_\n"; close $b;
	}
	print $n;
	' /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" "$root/usr/local/share/ca-certificates")
[ "${extra:-0}" = 0 ] || say "gave the root this host's $extra extra trusted CA certificate(s)"

# The host's Go module cache as a read-only local proxy in front of the real
# one: the same modules (go.sum checks them), fetched faster.
modcache=""
proxy=${GOPROXY:-https://proxy.golang.org}
if [ "${FRESH_CHECK_MODCACHE:-1}" = 1 ]; then
	modcache=$(go env GOMODCACHE 2>/dev/null)/cache/download
	if [ -d "$modcache" ]; then
		proxy="file:///mnt/host-gomodcache,$proxy"
	else
		modcache=""
	fi
fi

# Bash scripts inside (make's recipes, scripts/run.sh) name the command that
# made them fail.
cat >"$root/etc/fresh-check-errtrap.sh" <<'EOF'
trap 'echo "fresh-check: status $? from: $BASH_COMMAND  (${BASH_SOURCE[0]:-bash -c}:$LINENO)" >&2' ERR
EOF

# PID 1 of the namespace: sets up the root's mounts, runs `make run` chrooted,
# and on failure prints the daemon's log. When it exits, the kernel kills
# everything left in the namespace (the daemon, QEMU).
inner='
set -u
R=$1 KVM=$2 MODCACHE=$3 TIMEOUT=$4 PROXY=$5
mount -t proc proc "$R/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$R/sys" 2>/dev/null || { mount --rbind /sys "$R/sys" && mount -o remount,bind,ro "$R/sys"; }
mount -t tmpfs -o mode=755,nosuid dev "$R/dev"
for n in null zero full random urandom tty kmsg; do
	[ -e "/dev/$n" ] && touch "$R/dev/$n" && mount --bind "/dev/$n" "$R/dev/$n"
done
if [ "$KVM" = 1 ] && [ -e /dev/kvm ]; then touch "$R/dev/kvm" && mount --bind /dev/kvm "$R/dev/kvm"; fi
if [ -e /dev/net/tun ]; then mkdir "$R/dev/net" && touch "$R/dev/net/tun" && mount --bind /dev/net/tun "$R/dev/net/tun"; fi
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$R/dev/shm"
ln -s /proc/self/fd "$R/dev/fd"
ln -s /proc/self/fd/0 "$R/dev/stdin"; ln -s /proc/self/fd/1 "$R/dev/stdout"; ln -s /proc/self/fd/2 "$R/dev/stderr"
mount -t tmpfs -o mode=1777,nosuid,nodev tmp "$R/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev run "$R/run"
if [ -n "$MODCACHE" ]; then
	mkdir -p "$R/mnt/host-gomodcache"
	mount --bind "$MODCACHE" "$R/mnt/host-gomodcache" && mount -o remount,bind,ro "$R/mnt/host-gomodcache"
fi
env=(HOME=/root USER=root LOGNAME=root LANG=C.UTF-8 TERM="${TERM:-dumb}" BASH_ENV=/etc/fresh-check-errtrap.sh
	PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin GOPROXY="$PROXY")
for v in GOFLAGS GOSUMDB GONOSUMDB; do [ -n "${!v:-}" ] && env+=("$v=${!v}"); done
# In the background and waited for: PID 1 ignores Ctrl-C unless it has a
# handler, and runs a handler only between commands.
trap "exit 130" INT TERM
timeout --kill-after=10 "$TIMEOUT" chroot "$R" /usr/bin/env -i "${env[@]}" bash -c "cd /root/ember && make run" </dev/null &
wait $!
rc=$?
if [ "$rc" != 0 ]; then
	[ "$rc" = 124 ] && echo "fresh-check: make run did not finish within the budget (${TIMEOUT}s left)"
	if [ -s "$R/tmp/ember-daemon.log" ]; then
		echo "--- last lines of the daemon log (/tmp/ember-daemon.log in the root)"
		tail -n 20 "$R/tmp/ember-daemon.log"
	fi
fi
exit "$rc"
'
say "running 'make run' in the fresh root (log: $log)"
t1=$SECONDS
set +e
unshare --mount --pid --fork --kill-child --propagation private \
	bash -c "$inner" inner "$root" "${FRESH_CHECK_KVM:-1}" "$modcache" "$(left)" "$proxy" \
	> >(tee -a "$log") 2>&1
rc=$?
set -e
wait # for tee
run_time=$((SECONDS - t1))

if [ "$rc" = 0 ]; then
	say "make run took ${run_time}s; whole check $(elapsed)"
	say "PASS: 'make run' works on a fresh Debian 12 machine (commit $commit, $(elapsed))"
	exit 0
fi

# What was missing: names from "command not found" style errors, and the
# Debian package that provides each (looked up on this host).
echo
say "FAIL: 'make run' failed in the fresh Debian 12 root (status $rc, commit $commit, after $(elapsed))"
echo "--- failed commands"
grep -E '^fresh-check: status [0-9]+ from:|make(\[[0-9]+\])?: \*\*\*' "$log" | sed 's/^/  /' || echo "  (none named; see the log)"
names=$(perl -ne '
	print "$1\n" while /([\w.+-]+): command not found/g;               # bash
	print "$1\n" while /\d: ([\w.+-]+): not found/g;                   # dash
	print "$1\n" while /exec: "([^"]+)": executable file not found/g;  # Go
	print "$1\n" while /exec of "([^"]+)" failed: No such file/g;      # ember
	print "$1\n" while /\b([\w.+-]+) not found (?:in|on) PATH/g;       # ember: x not found in PATH
	print "$1\n" while /fetch kernel: ([\w.+-]+) not found/g;
	print "$1\n" while m{(?:^|\s)(?:/usr)?/s?bin/([\w.+-]+): No such file}g;
	' "$log" | sed 's#.*/##' | grep -vxE 'make|bash|sh|fresh-check' | sort -u || true)
if [ -n "$names" ]; then
	echo "--- missing programs (and the Debian package that provides each)"
	for n in $names; do
		pkg=$(dpkg -S "/usr/bin/$n" "/usr/sbin/$n" "/bin/$n" "/sbin/$n" 2>/dev/null | head -n1 | cut -d: -f1)
		echo "  $n: ${pkg:-(no package on this host provides it; try apt-file search bin/$n)}"
	done
	echo "  each belongs in ember's install step (scripts/deps.sh), not in this root"
fi
echo "--- last lines of the output"
tail -n 40 "$log" | sed 's/^/  /'
echo "--- full log: $log"
exit 1
