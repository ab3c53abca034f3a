package hosttools

// table is every host program ember's code, tests, benchmarks, scripts and
// make recipes execute. The guard test (guard_test.go) fails when one is
// missing or when a make target runs a tool its install step does not
// install: add the tool here, with the purposes of the targets that run it.
var table = []Tool{
	// What the ember binary runs.
	{Binary: "qemu-system-x86_64", Package: "qemu-system-x86", Needs: []Purpose{Run}, Daemon: Required,
		Use: "runs the VMs", Alt: []string{"qemu-kvm"}, Dirs: []string{"/usr/libexec"}},
	{Binary: "qemu-img", Package: "qemu-utils", Needs: []Purpose{Run}, Daemon: Required,
		Use: "makes each VM's copy-on-write disk", Dirs: []string{"/usr/libexec"}},
	{Binary: "mkfs.ext4", Package: "e2fsprogs", Needs: []Purpose{Run}, Daemon: Required,
		Use: "builds the built-in image's file system"},
	{Binary: "debugfs", Package: "e2fsprogs", Needs: []Purpose{Run}, Daemon: Required,
		Use: "gives the built-in image's files to root"},
	{Binary: "busybox", Package: "busybox-static", Needs: []Purpose{Run}, Daemon: Required,
		Use: "is the built-in image's userland (it must be the static build)", Check: CheckStatic},
	{Binary: "apt-cache", Package: "apt", Base: true, Daemon: Optional,
		Use: "finds Debian's cloud kernel package (the first VM fetches it; `ember kernel import` needs no apt)"},
	{Binary: "apt-get", Package: "apt", Base: true, Daemon: Optional,
		Use: "downloads Debian's cloud kernel package (the first VM fetches it; `ember kernel import` needs no apt) and the packages of a recipe's PACKAGES step"},
	{Binary: "dpkg-deb", Package: "dpkg", Base: true, Daemon: Optional,
		Use: "unpacks Debian's cloud kernel package"},
	{Binary: "mmdebstrap", Package: "mmdebstrap", Needs: []Purpose{Run, Test, FreshCheck}, Daemon: Optional,
		Use: "builds the built-in debian image from the host's apt sources (its first use); make fresh-check's fresh Debian 12 root"},
	{Binary: "unshare", Package: "util-linux", Base: true, Daemon: Optional,
		Use: "gives mmdebstrap a mount namespace of its own while it builds the debian image"},

	// Tests and benchmarks.
	{Binary: "e2fsck", Package: "e2fsprogs", Needs: []Purpose{Test},
		Use: "checks a guest's file system after power-off (tests)"},
	{Binary: "ps", Package: "procps", Needs: []Purpose{Test},
		Use: "shows which user QEMU runs as (tests)"},
	{Binary: "ip", Package: "iproute2", Needs: []Purpose{Tap},
		Use: "makes the network namespaces tap tests and benchmarks run in; shows links"},
	{Binary: "nft", Package: "nftables", Needs: []Purpose{Tap},
		Use: "inspects ember's nftables table (tap tests; nft list table inet ember)"},
	{Binary: "dnsmasq", Package: "dnsmasq-base", Needs: []Purpose{Bench},
		Use: "is the DNS server the VM DNS benchmark compares with"},

	// make fresh-check.
	{Binary: "mount", Package: "mount", Needs: []Purpose{FreshCheck},
		Use: "mounts /proc, /dev and /tmp in the fresh root"},

	// Build tools every machine ember is built on has.
	{Binary: "go", Base: true, Use: "builds ember and runs its tests (install Go from https://go.dev/dl)"},
	{Binary: "gofmt", Base: true, Use: "checks formatting (make vet; it comes with Go)"},
	{Binary: "gcc", Package: "gcc", Base: true, Use: "cgo, which the race detector (make unit) needs"},
	{Binary: "make", Package: "make", Base: true, Use: "runs the make targets"},
	{Binary: "git", Package: "git", Base: true, Use: "clones the repository (make fresh-check)"},

	// Debian's Essential packages: on every Debian 12 system.
	{Binary: "sh", Package: "dash", Base: true},
	{Binary: "bash", Package: "bash", Base: true},
	{Binary: "perl", Package: "perl-base", Base: true},
	{Binary: "grep", Package: "grep", Base: true},
	{Binary: "sed", Package: "sed", Base: true},
	{Binary: "tar", Package: "tar", Base: true},
	{Binary: "find", Package: "findutils", Base: true},
	{Binary: "getent", Package: "libc-bin", Base: true},
	{Binary: "dpkg", Package: "dpkg", Base: true},
	{Binary: "setsid", Package: "util-linux", Base: true},
	{Binary: "basename", Package: "coreutils", Base: true},
	{Binary: "cat", Package: "coreutils", Base: true},
	{Binary: "chmod", Package: "coreutils", Base: true},
	{Binary: "chroot", Package: "coreutils", Base: true},
	{Binary: "cp", Package: "coreutils", Base: true},
	{Binary: "cut", Package: "coreutils", Base: true},
	{Binary: "dirname", Package: "coreutils", Base: true},
	{Binary: "du", Package: "coreutils", Base: true},
	{Binary: "env", Package: "coreutils", Base: true},
	{Binary: "head", Package: "coreutils", Base: true},
	{Binary: "id", Package: "coreutils", Base: true},
	{Binary: "install", Package: "coreutils", Base: true},
	{Binary: "ln", Package: "coreutils", Base: true},
	{Binary: "ls", Package: "coreutils", Base: true},
	{Binary: "mkdir", Package: "coreutils", Base: true},
	{Binary: "mktemp", Package: "coreutils", Base: true},
	{Binary: "mv", Package: "coreutils", Base: true},
	{Binary: "nohup", Package: "coreutils", Base: true},
	{Binary: "rm", Package: "coreutils", Base: true},
	{Binary: "seq", Package: "coreutils", Base: true},
	{Binary: "sha256sum", Package: "coreutils", Base: true},
	{Binary: "sleep", Package: "coreutils", Base: true},
	{Binary: "sort", Package: "coreutils", Base: true},
	{Binary: "tail", Package: "coreutils", Base: true},
	{Binary: "tee", Package: "coreutils", Base: true},
	{Binary: "timeout", Package: "coreutils", Base: true},
	{Binary: "touch", Package: "coreutils", Base: true},

	// make stop and make install.
	{Binary: "pkill", Package: "procps", Needs: []Purpose{Run}, Use: "stops the daemon (make stop)"},
	{Binary: "groupadd", Package: "passwd", Needs: []Purpose{Run}, Use: "creates the ember group (make install)"},
	{Binary: "useradd", Package: "passwd", Needs: []Purpose{Run}, Use: "creates the ember-qemu user QEMU runs as (make install)"},
}
