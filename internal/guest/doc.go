// Package guest is the host side of the ember guest agent: it dials the
// agent's SSH server inside a VM with the daemon's key, waits for a booting
// guest to become ready, runs commands with their exit status passed
// through, opens SFTP, asks the guest to power off and sets its clock
// (SetClock; ErrOldAgent from an agent older than the request).
//
// The agent's host key is pinned (HostKeyPin): the fingerprint the agent
// announced on the console at boot, then the key recorded from that first
// handshake. A server with another key fails the handshake with
// ErrHostKeyMismatch before the client authenticates or sends anything.
//
// It also runs the agent's persistent sessions (create, list, read, attach,
// signal, kill). The protocol it speaks is package guestproto, which checks
// every reply against its limits: a guest's bytes are untrusted. This
// package never imports the agent itself; only its tests run one
// in-process.
package guest
