package guestproto

import (
	"encoding/base64"
	"fmt"
	"strings"

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
	// ("... ready on ADDR host-key FINGERPRINT ..."; see ReadyMessage).
	// It is a hint for when to dial, and it names the host key the
	// daemon pins.
	ReadyLine = ConsolePrefix + "ready"
	// ProbeOKLine is printed in probe mode just before the power-off.
	ProbeOKLine = ConsolePrefix + "probe ok"
	// PowerOffLine and RebootLine are the agent's last lines before it
	// powers the VM off or resets it (a guest's poweroff or reboot, or
	// the daemon's stop): how the host tells the one from the other, and
	// either from a crash, which prints neither.
	PowerOffLine = ConsolePrefix + "power off"
	RebootLine   = ConsolePrefix + "reboot"
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

// readyHostKey introduces the host key's fingerprint on the ready line.
const readyHostKey = " host-key "

// MaxReadyLine bounds the ready line the host reads from the console.
const MaxReadyLine = 512

// ReadyMessage is the agent's ready line (without its newline): it
// listens on addr and holds the host key hostKey. The console is the
// guest's own channel to the host, which no network peer and no other
// guest can write to, and right after boot only the agent writes there:
// so the fingerprint announced there is the one the daemon pins (see
// ParseReadyHostKey).
func ReadyMessage(addr string, hostKey ssh.PublicKey) string {
	return ReadyLine + " on " + addr + readyHostKey + ssh.FingerprintSHA256(hostKey)
}

// ParseReadyHostKey returns the host key fingerprint (as
// ssh.FingerprintSHA256 spells it) that a ready line announces. The line
// is guest text: anything but one well-formed SHA256 fingerprint after
// " host-key " is an error.
func ParseReadyHostKey(line string) (string, error) {
	if len(line) > MaxReadyLine {
		return "", fmt.Errorf("ready line is longer than %d bytes", MaxReadyLine)
	}
	if !strings.HasPrefix(line, ReadyLine) {
		return "", fmt.Errorf("not a ready line")
	}
	_, rest, ok := strings.Cut(line, readyHostKey)
	if !ok {
		return "", fmt.Errorf("the ready line names no host key")
	}
	fp, _, _ := strings.Cut(rest, " ")
	if err := checkFingerprint(fp); err != nil {
		return "", err
	}
	return fp, nil
}

// checkFingerprint accepts "SHA256:" and the unpadded base64 of 32 bytes.
func checkFingerprint(fp string) error {
	b64, ok := strings.CutPrefix(fp, "SHA256:")
	if !ok {
		return fmt.Errorf("host key fingerprint %.80q is not SHA256", fp)
	}
	// 43 characters exactly: the decoder skips \r and \n, so a line end
	// after the fingerprint would otherwise pass (found by fuzzing).
	sum, err := base64.RawStdEncoding.Strict().DecodeString(b64)
	if err != nil || len(sum) != 32 || len(b64) != 43 {
		return fmt.Errorf("host key fingerprint %.80q is not a SHA256 fingerprint", fp)
	}
	return nil
}
