package guestproto

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// ReqUserKeys is ember's own global request (on the SSH connection, not a
// channel) by which the daemon gives the agent the user's public keys
// (`ember create --ssh-key`): the agent then accepts them beside the
// daemon's own, for the user's own ssh, scp, sftp and editor. Each request
// replaces the whole set; an empty payload clears it. The agent takes it
// only on a connection that the daemon's key authenticated. The daemon
// sends it on every new agent connection, so a restarted agent server or
// a new boot gets the keys again.
const ReqUserKeys = "ember-user-keys@emberhq"

// Bounds on the user's keys: how many one VM accepts, and the length of
// one key as an authorized_keys line (a 16384-bit RSA key is about 2.8 KB).
const (
	MaxUserKeys    = 16
	MaxUserKeyLine = 8 << 10
	// MaxUserKeysPayload bounds a ReqUserKeys payload.
	MaxUserKeysPayload = MaxUserKeys * (MaxUserKeyLine + 1)
)

// UserKeyLine is k as one authorized_keys line without options, comment or
// newline: the form the daemon stores and sends.
func UserKeyLine(k ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k)), "\n")
}

// ParseUserKey reads one user key from an authorized_keys line (a `.pub`
// file's text): a plain public key, with no options (they would be
// ignored, so they are refused) and no certificate. The comment is dropped.
func ParseUserKey(line string) (ssh.PublicKey, error) {
	if len(line) > MaxUserKeyLine {
		return nil, fmt.Errorf("key of %d bytes is longer than %d", len(line), MaxUserKeyLine)
	}
	k, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return nil, fmt.Errorf("not an SSH public key: %w", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("more than one key on the line")
	}
	if len(options) > 0 {
		return nil, fmt.Errorf("authorized_keys options (%s) are not supported", strings.Join(options, ","))
	}
	if _, ok := k.(*ssh.Certificate); ok {
		return nil, errors.New("an SSH certificate, not a public key")
	}
	return k, nil
}

// EncodeUserKeys is the ReqUserKeys payload for lines (UserKeyLine each):
// one per line.
func EncodeUserKeys(lines []string) ([]byte, error) {
	if len(lines) > MaxUserKeys {
		return nil, fmt.Errorf("%d user keys, more than %d", len(lines), MaxUserKeys)
	}
	for _, l := range lines {
		if strings.ContainsAny(l, "\r\n") || len(l) > MaxUserKeyLine {
			return nil, fmt.Errorf("user key %.40q... is not one line of at most %d bytes", l, MaxUserKeyLine)
		}
	}
	return []byte(strings.Join(lines, "\n")), nil
}

// DecodeUserKeys reads a ReqUserKeys payload: at most MaxUserKeys keys,
// each a line that ParseUserKey accepts.
func DecodeUserKeys(p []byte) ([]ssh.PublicKey, error) {
	if len(p) > MaxUserKeysPayload {
		return nil, fmt.Errorf("user keys: %d bytes, more than %d", len(p), MaxUserKeysPayload)
	}
	if len(p) == 0 {
		return nil, nil
	}
	lines := strings.Split(string(p), "\n")
	if len(lines) > MaxUserKeys {
		return nil, fmt.Errorf("user keys: %d, more than %d", len(lines), MaxUserKeys)
	}
	keys := make([]ssh.PublicKey, 0, len(lines))
	for i, l := range lines {
		k, err := ParseUserKey(l)
		if err != nil {
			return nil, fmt.Errorf("user key %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}
