// Package daemon is ember's composition root: it owns all state and answers
// the CLI and the web UI over one request dispatch.
//
// # Shape
//
// Open(ctx, Options) builds a Daemon from explicit dependencies (layout,
// config, store, hypervisor driver, the daemon's SSH key, seams for tests),
// refuses a layout whose unix sockets would exceed the kernel's 107 bytes
// (invalid), makes its folders with safe owners and modes (layout.Ensure:
// root:<socket_group> 0750 runtime folder as root; 0700 folders that must
// be the user's own otherwise), takes the single-instance lock (flock on
// the pid file, opened without following a symlink, plus a socket check),
// builds the QEMU driver confined as the config says (qemuConfinement in
// sandbox.go: QEMU's seccomp filter, the unprivileged qemu_user when
// root, a cgroup per VM with its memory and CPU limits where cgroups can
// be made, the loopback filter on each VM's cgroup v2 folder where BPF
// can be loaded), re-attaches to VMs whose QEMU kept running while no daemon
// was there and settles the operations the previous daemon left
// unfinished. Serve(ctx)
// accepts connections on the unix socket (0660, group socket_group, as
// root; 0600 rootless); each carries one request, routed by dispatch
// (methods.go) to the handler a service registered for that entry of
// wire's method table. Close() stops serving; VMs keep running.
//
// Serve also starts the web listener (web.go) on 127.0.0.1 (web_port;
// off with web = false): the dashboard, the same method table over POST
// /api/METHOD and websockets (served by the socket's serveConn), and
// /metrics (metrics.go), all behind a random token kept in the runtime
// folder (0600) and given to a browser as an HttpOnly SameSite=Strict
// cookie; the web server's mu (a leaf) guards only its closing.
//
// Clients may be hostile (serve.go): at most 512 connections are served
// at once, the oldest silent one shed for a newcomer; a request line is
// at most 1 MiB and due within 10 s of connecting; accept errors from
// exhaustion back off and retry. A panic in a request, or in any
// goroutine the daemon starts (goSafe), fails that request only.
//
// # Services, state and locks
//
// The daemon is split into services; each owns its state, its lock and
// its methods, and registers them in the dispatch table (buildServices in
// daemon.go wires them):
//
//   - opService (ops.go): op.* over every operation registry (opSource:
//     the create operations, the image build and import operations) and the store's
//     finished operations. Each opRegistry[T] owns its lock.
//   - imageService (images.go, image_manage.go): image.*; imageOpsMu
//     serialises registry mutations (recording a built-in image built on
//     first use, an imported or registered image; addFile, which
//     registers a finished image file such as a promoted one; remove,
//     refused while VMs or images are built on the image). builtinSlots:
//     one first-use build per built-in image (tiny, debian), which
//     nothing else waits for. image.register copies a file its client
//     passes as a descriptor, and a kernel file passed with it becomes
//     the image's own kernel (image_kernel.go), removed by image rm when
//     nothing else names it. image.import (image_import.go) reads
//     an archive its client passes as a descriptor, or pulls a registry
//     reference, and does its slow work (unpack, mkfs) holding no lock,
//     as an operation in buildOps.
//     A VM copies its image's config (Env, WorkingDir, User) at create;
//     exec and sessions start with it (withImageConfig, imageconfig.go).
//     buildOps: the image builds (imagebuild.go, buildctx.go), each an
//     imageBuildOp with its log; a build boots its step VMs through
//     buildHost (the VM service, set by buildServices), keeps each step's
//     result in a cache keyed by its inputs (buildcache.go: pruned under
//     imageOpsMu when no build runs) and registers the image under
//     imageOpsMu at the end.
//   - bootService (boot.go, accel.go): kernel.*, the kernel fetched on
//     first use (kernelFetchMu), each kernel's initramfs (initrdCache: a
//     leaf lock that hands out one mutex per file and remembers each
//     file's key while the agent and modules stay the same) and the accelerator
//     (accelCache: one decision per kernel and initramfs, made by booting
//     that kernel under KVM for a moment or taken from the config; its
//     lock is a leaf never held across the probe).
//   - networks (network.go): one vmNetwork strategy per mode — userNet
//     (QEMU user-mode networking) and tapNet (nil unless tap is
//     configured: the TAP pool and the VM DNS server, each with its own
//     lock, a cache of the leases under tapNet.mu, a leaf, and the
//     bridge's guestFilter, which lets each lease's TAP send only as
//     that lease; the rest of the guest policy is fixed at start).
//   - vmService (vm.go, exec.go, copy.go, ssh.go, guests.go, vmlock.go, promote.go,
//     pause.go, snapshot.go, snapshot_prune.go): vm.* (vm.pause and vm.resume stop and run a
//     VM's guest through the driver's Pauser, recorded as paused with no
//     last error, its guest's clock set to the host's once it runs again,
//     as after a snapshot's save; snapshot.* saves a VM's memory and disk, and a create
//     from a snapshot restores it (with the saved CPU model, Spec.CPUModel;
//     a boot takes the driver's, cpuModel) and makes its guest a new machine, a
//     tap guest reached with its TAP quarantined until it has taken its
//     VM's own network; an image's warm snapshot saves its disk as an
//     overlay on the image file (snapDisk, the driver's SaveOverlay), a
//     user's flattened, standalone; pruneWarm drops the warm snapshots no create
//     would restore and bounds the rest per image, never one a VM's disk
//     or a create in flight uses (snapshotHolds, a leaf lock; warmPruneMu,
//     one prune at a time); standbys (standby.go, standbyPool, a leaf
//     lock): VMs restored from a snapshot in advance, with no row, which
//     a create of the same shape claims, taking their ID;
//     vm.copy_in and vm.copy_out move `ember cp`'s tar streams into
//     and out of the guest over SFTP, checked by internal/treecopy; the
//     host side is the CLI's, with its user's rights; vm.ssh_proxy pipes
//     the user's own OpenSSH client to the agent's SSH port, and every new
//     agent connection is given the VM's user keys, giveUserKeys) and image.promote
//     (promoteVM: the hypervisor's backup job started
//     while the guest's root filesystem is frozen through its agent, the
//     copy flattened and registered through the image service). vmLocks
//     (vmLockSet): one mutex per VM ID, reached through withVMLockByID and
//     withVMLockByRef (name or unique ID prefix); held only to read and
//     change a VM's record, never across guest I/O or a hypervisor call:
//     slow work (boot, shutdown) happens between two short critical
//     sections, with a transitional state (creating, starting, stopping,
//     deleting) in the store keeping other changes out (busy). createVMMu:
//     name uniqueness, the guest address allocation (tap mode) and the
//     insert of a new VM row; released before any slow work. createOps:
//     the create operations. guests (guestPool): one agent SSH connection
//     per running VM, to an agent that must hold the host key pinned at
//     its boot (guests.go). stops (pendingStops, stopping.go): the graceful
//     stops in flight, which rm -f and Close cut short. followers
//     (vmFollowers, follow.go): one goroutine per running VM that drains
//     its console ring into its bounded log and records it paused when
//     its disk cannot be written. Create and start undo each step as
//     they go (undoStack, undo.go).
//   - sessionService (session.go, session_ctl.go, session_run.go): session.*, one
//     guestSessionController per persistent session in use, keyed by (VM
//     ID, name), plus the sessions of stopped VMs reported as ended.
//     Sessions themselves live in the guest agent; controllers are
//     re-created lazily after a daemon restart. Output is fanned out
//     without blocking: a client more than 4 MiB behind is dropped with a
//     message, so it never stalls the others. Input goes into a bounded
//     queue (inMu, inputQueueLimit) that one writer goroutine (writeLoop)
//     drains into the guest in order, so no lock is held across a guest
//     write: input to a session that does not read it fails with busy
//     after inputRoomWait, and stalls nothing else. A replay to an
//     attaching terminal leaves out what would make it answer into the
//     session (termtext.StripQueries); session.run and session.wait are
//     clients of the controller like any other.
//   - portCap (cap_port.go): port.*, the port capability's forwards
//     (portCap.mu, a leaf), and through hostPortCap (cap_hostport.go,
//     hostPortCap.mu, a leaf) the hostport capability's: host ports a
//     guest reaches at host.ember.internal over reverse forwards its
//     agent listens for.
//
// Capabilities (caps.go): a VM's `--cap NAME[=ARG]` entries are stored
// with it and act at named points of its life (vmCap: before boot, guest
// ready, before stop, before delete) through the registry vmCaps, built
// in buildServices with envCap, portCap, hostPortCap, copyCap and
// mountCap; a failing hook fails the boot and undoes the earlier hooks.
// copy and mount name host folders, and port may name a host port below
// 1024, which only root and the daemon's own user may do (trustedPeer,
// from the socket's peer credentials, withPeer); vmCaps.checkClient says
// so before any argument is looked at on the host. A named folder is
// pinned at create (store.FolderPin: resolved path, device, inode) and
// opened at each use with no symlink followed and compared to the pin
// (hostFolders.open), so a folder swapped for a symlink meanwhile is
// refused.
//
// Events (events.go): services publish lifecycle events to one hub
// (internal/events) where a change is committed; the events stream
// replays its ring from a client's sequence number or time, then
// follows it. Its lock is the innermost of all: Publish holds it for one
// slot write and never waits for a subscriber, so it may be called under
// any lock (portCap.mu and hostPortCap.mu publish under theirs), and
// nothing is locked under it.
//
// Lock order — acquire left to right, release in reverse:
//
//	vmLocks[id] → {createVMMu, imageOpsMu} → subsystem-local locks → the event hub's lock
//
// A VM's work hangs on the daemon's base context, never on the request that
// started it: a create survives its client hanging up, and op cancel or
// Close cancels it, after which everything it made is removed.
//
// See ARCHITECTURE.md for the request flow of create and the crash rules.
package daemon
