package guestproto

import (
	"encoding/base64"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// Kernel arguments the agent reads (key=value). Unknown ember.* keys are
// ignored, so the daemon can add one before every agent knows it.
const (
	ArgRoot     = "ember.root"     // root block device (ext4)
	ArgHostname = "ember.hostname" // the guest's hostname
	ArgKey      = "ember.key"      // the only key accepted for SSH; see KeyArg
	ArgIP       = "ember.ip"       // address/prefix for the first non-loopback link
	ArgGateway  = "ember.gw"       // default route
	ArgDNS      = "ember.dns"      // comma-separated resolvers
	ArgPort     = "ember.port"     // SSH listen port; DefaultPort when absent
	ArgProbe    = "ember.probe"    // "1": print ProbeOKLine and power off
)

// ProbeArg is the kernel argument that puts the agent in probe mode: the
// daemon boots such a guest under KVM to learn whether KVM really runs the
// kernel.
const ProbeArg = ArgProbe + "=1"

// Console lines. The agent prefixes every console line with ConsolePrefix;
// the host looks for these.
const (
	ConsolePrefix = "ember-agent: "
	// StartLine is the agent's first line as PID 1 (the benchmark times
	// boots to it).
	StartLine = ConsolePrefix + "start"
	// ReadyLine starts the line printed once the SSH server listens
	// ("... ready on ADDR"). It is a hint: the host still dials.
	ReadyLine = ConsolePrefix + "ready"
	// ProbeOKLine is printed in probe mode just before the power-off.
	ProbeOKLine = ConsolePrefix + "probe ok"
)

// KeyArg is the ember.key value for pub: base64 (raw URL alphabet) of the
// key's SSH wire encoding, so it holds no character the kernel's command
// line parser would split on.
func KeyArg(pub ssh.PublicKey) string {
	return base64.RawURLEncoding.EncodeToString(pub.Marshal())
}

// ParseKeyArg decodes an ember.key value.
func ParseKeyArg(v string) (ssh.PublicKey, error) {
	raw, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("decode key: %w", err)
	}
	k, err := ssh.ParsePublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	return k, nil
}
