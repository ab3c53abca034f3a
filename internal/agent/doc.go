// Package agent is ember-agent, the static guest agent that runs inside every
// ember VM.
//
// The same binary has two roles. As PID 1 of the initramfs the daemon
// generates ("init mode") it mounts the basic filesystems, loads the kernel
// modules listed in /etc/ember/modules, switches to the VM's root disk, sets
// the hostname and network from the ember.* kernel arguments (bootSteps:
// only what the agent cannot serve without is fatal, the modules, the root
// and the address the daemon dials; anything else it writes or mounts at
// boot, /etc/resolv.conf among them, only warns on the console, so a guest
// whose disk filled up still boots and can be cleaned), and then stays
// a zombie reaper while a child copy of itself ("serve mode") runs the SSH
// server the host talks to. Keeping the SSH server out of PID 1 means PID 1
// can reap every orphan with wait4(-1) without stealing exit statuses that
// os/exec in the server is waiting for. PID 1 makes the SSH host key once
// per boot and hands it to each server it starts over a pipe (fd 3), so a
// restarted server holds the key the daemon pinned from the first one's
// ready line.
//
// Serve mode also hosts persistent sessions (sessions.go): named processes
// on PTYs with a scrollback ring, owned by the server process rather than
// by any SSH connection, so they survive the host's connections (and the
// daemon) coming and going. The host creates, lists, attaches to (replay,
// then live output), writes to, resizes, signals and kills them over one
// custom channel type.
//
// In a VM (serve --from-cmdline) the server also freezes the root
// filesystem for the host (freeze.go, guestproto.FreezeCommand), so a
// running VM's disk can be copied consistently: for as long as one exec
// channel stays open, and never longer than the limit the host asked,
// after which a timer thaws it by itself.
// It also steps the guest's clock to the host's time when the host asks
// (clock.go, guestproto.SetClockCommand): a VM's clock stands still while
// the VM is paused or its snapshot is saved.
//
// Everything the host and the agent agree on (kernel arguments, console
// lines, channel and request names, the exec and session payloads, limits)
// is in package guestproto; the host never imports this package.
//
// Serve mode is also usable on its own (ember-agent serve --listen ...) and
// in-process through NewServer, which is how the host-side client in
// internal/guest is tested without a VM.
package agent
