// Package guestproto is the protocol between the daemon and the ember guest
// agent: everything the two sides must agree on, and nothing else. The agent
// (internal/agent, built into every VM's initramfs) and the daemon's client
// to it (internal/guest) both import it; neither imports the other, so the
// daemon never links the program that runs inside the guest. The two ship
// together, so the protocol is only compatible with itself.
//
// Boot. The daemon tells the agent its configuration through ember.*
// kernel arguments (Arg*). The only SSH key the agent accepts travels as
// ember.key (KeyArg, ParseKeyArg). The agent writes lines for people on the
// console; two of them are signals the host waits for: ReadyLine (the SSH
// server listens; ReadyMessage adds the fingerprint of the agent's host
// key, which the daemon reads with ParseReadyHostKey and pins) and, with
// ProbeArg, ProbeOKLine (the kernel reached the agent; used to decide
// whether KVM runs it).
//
// Transport. One SSH connection per VM, as User, authenticated by the
// daemon's key. On it:
//
//   - "session" channels (ChannelSession) as in RFC 4254: exec, shell,
//     pty-req, env, window-change, signal, the sftp subsystem, and the
//     exit-status the server sends. An exec command that starts with
//     ExecPrefix carries a JSON ExecPayload (argv, environment, folder), so
//     argv reaches the guest without shell quoting; PoweroffCommand asks the
//     agent (PID 1) to shut the VM down; a FreezeCommand (EncodeFreeze)
//     keeps the guest's root filesystem frozen while the channel lives,
//     at most its limit (freeze.go); a SetClockCommand (EncodeSetClock)
//     steps the guest's wall clock to the host's time after the VM stood
//     still (clock.go); a ReidentifyCommand makes a restored guest a new
//     machine (reidentify.go).
//   - "direct-tcpip" channels (ChannelDirectTCPIP) for port forwards.
//   - SessionChannelType channels for persistent sessions (session.go).
//   - the global request ReqUserKeys (userkeys.go): the user's public keys
//     (`ember create --ssh-key`), which the agent then accepts beside the
//     daemon's, for User only, for the user's own OpenSSH client; only the
//     daemon's connection may send it.
//
// Untrusted input. Root in a guest can replace the agent, so everything the
// daemon reads from a guest is hostile until checked: ReadResponse stops a
// reply line at MaxReplyLine and validates every length and count in it,
// ReadScrollback reads no more than the validated length and allocates as
// the bytes arrive, ParseExitStatus and ParseWindowChange check their
// payloads. The limits (limits.go) are chosen so that anything an honest
// agent sends fits inside them. Each decoder has a fuzz test.
package guestproto
