package wire

import "fmt"

// The user's own SSH: `ember create --ssh-key FILE` gives a VM's agent the
// user's public keys (CreateVMParams.SSHKeys, authorized_keys lines), and
// VMSSHProxy carries an OpenSSH client's bytes to the agent's SSH port
// through the daemon (`ember ssh-proxy`, the ProxyCommand that `ember
// ssh-config` writes): FrameStdin and FrameStdinEOF from the client,
// FrameStdout from the daemon, then FrameExit.
const (
	// MaxSSHKeys bounds the user's keys of one VM.
	MaxSSHKeys = 16
	// MaxSSHKeyLen bounds one key's authorized_keys line.
	MaxSSHKeyLen = 8 << 10
)

// checkSSHKeys bounds the user's keys; the daemon parses them.
func checkSSHKeys(keys []string) error {
	if len(keys) > MaxSSHKeys {
		return fmt.Errorf("at most %d ssh keys per vm, not %d", MaxSSHKeys, len(keys))
	}
	for _, k := range keys {
		if len(k) > MaxSSHKeyLen {
			return fmt.Errorf("ssh key %.40q... is longer than %d bytes", k, MaxSSHKeyLen)
		}
	}
	return nil
}
