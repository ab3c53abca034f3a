package guestproto

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// A VM restored from a snapshot runs the snapshot's guest: its clock, its
// hostname, its SSH host key and its random generator's state are the
// saved VM's. Before the daemon hands the VM out, it asks the agent (over
// a connection that met the snapshot's pinned host key) to become a new
// machine with one exec channel whose command is EncodeReidentify's and
// whose input is fresh host entropy (MinEntropy..MaxEntropy bytes). The
// agent sets the clock and the hostname, mixes the entropy into the
// kernel's pool and reseeds it (RNDADDENTROPY, RNDRESEEDCRNG), makes a new
// host key for every later connection and writes that key, in
// authorized_keys form, on stdout; the exit status is 0, or 1 with a
// message on stderr.
const ReidentifyCommand = "ember-reidentify"

// Bounds of the entropy the host sends.
const (
	MinEntropy = 32
	MaxEntropy = 512
)

// EncodeReidentify is the exec command that makes the guest hostname with
// the clock set to now.
func EncodeReidentify(hostname string, now time.Time) (string, error) {
	if !ValidHostname(hostname) {
		return "", fmt.Errorf("reidentify: hostname %q is not a valid hostname", hostname)
	}
	return ReidentifyCommand + " " + hostname + " " + strconv.FormatInt(now.UnixNano(), 10), nil
}

// DecodeReidentify reads a reidentify command: ok is false for any other
// command.
func DecodeReidentify(cmd string) (hostname string, now time.Time, ok bool, err error) {
	rest, ok := strings.CutPrefix(cmd, ReidentifyCommand+" ")
	if !ok {
		if cmd == ReidentifyCommand {
			return "", time.Time{}, true, fmt.Errorf("bad reidentify request: no hostname")
		}
		return "", time.Time{}, false, nil
	}
	f := strings.Split(rest, " ")
	if len(f) != 2 || !ValidHostname(f[0]) {
		return "", time.Time{}, true, fmt.Errorf("bad reidentify request %q", cmd)
	}
	ns, perr := strconv.ParseInt(f[1], 10, 64)
	if perr != nil || ns <= 0 {
		return "", time.Time{}, true, fmt.Errorf("bad reidentify request: time %q", f[1])
	}
	return f[0], time.Unix(0, ns), true, nil
}

// ValidHostname reports whether h is a hostname the agent sets: 1 to 63
// letters, digits and hyphens, not starting or ending with a hyphen.
func ValidHostname(h string) bool {
	if len(h) == 0 || len(h) > 63 || h[0] == '-' || h[len(h)-1] == '-' {
		return false
	}
	for _, c := range h {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
