package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/wire"
)

// The user's own SSH client with a VM. `ember create --ssh-key` gives the
// agent the user's public keys; `ember ssh-config` writes `Host
// NAME.ember` entries whose ProxyCommand (`ember ssh-proxy NAME`) reaches
// the agent through the daemon's socket, and whose known_hosts file holds
// the agent's host key that the daemon pinned at boot, so OpenSSH checks
// it (StrictHostKeyChecking yes). A user key logs in as root, the user
// the agent runs everything as.

// sshDomain is the suffix of the Host names `ember ssh-config` writes.
const sshDomain = ".ember"

// maxSSHKeyFile bounds a public key file `--ssh-key` reads.
const maxSSHKeyFile = 64 << 10

// readSSHKeys reads the public keys of files (authorized_keys lines: a
// `.pub` file holds one) for `ember create --ssh-key`; each key is
// checked here, and a problem names its file.
func readSSHKeys(files []string) ([]string, error) {
	var keys []string
	for _, f := range files {
		ks, err := readSSHKeyFile(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	if len(keys) > guestproto.MaxUserKeys {
		return nil, fmt.Errorf("--ssh-key: %d keys, at most %d per vm", len(keys), guestproto.MaxUserKeys)
	}
	return keys, nil
}

func readSSHKeyFile(name string) ([]string, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("--ssh-key: %w", err)
	}
	defer f.Close()
	raw, err := io.ReadAll(io.LimitReader(f, maxSSHKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("--ssh-key %s: %w", name, err)
	}
	if len(raw) > maxSSHKeyFile {
		return nil, fmt.Errorf("--ssh-key %s: longer than %d bytes; give a public key file (.pub)", name, maxSSHKeyFile)
	}
	var keys []string
	for i, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := guestproto.ParseUserKey(line)
		if err != nil {
			return nil, fmt.Errorf("--ssh-key %s, line %d: %v (give a public key file, such as ~/.ssh/id_ed25519.pub)", name, i+1, err)
		}
		keys = append(keys, guestproto.UserKeyLine(k))
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("--ssh-key %s: no public key in it", name)
	}
	return keys, nil
}

// defaultSSHKeys are the invoking user's ~/.ssh/*.pub, when --ssh-key is
// not given; none when there are none. A file that holds no usable key
// is left out with a warning rather than failing every create.
func defaultSSHKeys(warn io.Writer) []string {
	home, err := os.UserHomeDir()
	if err != nil {
		return nil
	}
	files, _ := filepath.Glob(filepath.Join(home, ".ssh", "*.pub"))
	sort.Strings(files)
	var keys []string
	for _, f := range files {
		ks, err := readSSHKeyFile(f)
		if err != nil {
			fmt.Fprintf(warn, "ember: warning: leaving out %s: %v\n", f, err)
			continue
		}
		for _, k := range ks {
			if len(keys) == guestproto.MaxUserKeys {
				fmt.Fprintf(warn, "ember: warning: using the first %d keys of ~/.ssh/*.pub; give --ssh-key to choose\n", guestproto.MaxUserKeys)
				return keys
			}
			keys = append(keys, k)
		}
	}
	return keys
}

// sshFiles is where the CLI keeps, per daemon, the known_hosts file of
// each VM: under the user's own config folder (~/.config/ember/ssh),
// in a folder named for the daemon's socket, so two daemons' VMs of one
// name never share an entry.
func sshFiles(c *client.Client) (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("where to keep the VMs' known_hosts files: %w", err)
	}
	sum := sha256.Sum256([]byte(c.Socket))
	return filepath.Join(dir, "ember", "ssh", hex.EncodeToString(sum[:6])), nil
}

func knownHostsFile(dir, vm string) string { return filepath.Join(dir, vm+".known_hosts") }

// writeKnownHosts writes vm's known_hosts file: its agent's pinned host
// key under the alias NAME.ember, or nothing while it has none (a stopped
// VM). The file is replaced whole, by a rename.
func writeKnownHosts(dir string, vm wire.VM) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("known_hosts folder: %w", err)
	}
	var body string
	if vm.HostKey != "" {
		body = vm.Name + sshDomain + " " + vm.HostKey + "\n"
	}
	tmp, err := os.CreateTemp(dir, ".known_hosts-*")
	if err != nil {
		return fmt.Errorf("known_hosts of %s: %w", vm.Name, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(body); err != nil {
		tmp.Close()
		return fmt.Errorf("known_hosts of %s: %w", vm.Name, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("known_hosts of %s: %w", vm.Name, err)
	}
	if err := os.Rename(tmp.Name(), knownHostsFile(dir, vm.Name)); err != nil {
		return fmt.Errorf("known_hosts of %s: %w", vm.Name, err)
	}
	return nil
}

// shellQuote quotes s for the shell that runs a ProxyCommand, with %
// doubled (ssh expands %-tokens there).
func shellQuote(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	return strings.ReplaceAll(q, "%", "%%")
}

// configQuote is s as one ssh_config argument (a path): quoted, with %
// doubled.
func configQuote(s string) (string, error) {
	if strings.ContainsAny(s, "\"\n\r") {
		return "", fmt.Errorf("path %q cannot be written in an ssh config", s)
	}
	return `"` + strings.ReplaceAll(s, "%", "%%") + `"`, nil
}

// sshOptions are the ssh_config options for vm, in order.
type sshOption struct{ key, value string }

// sshOptionsFor are the options that reach vm through this ember: the
// ProxyCommand (this binary, with --home when one is in use) and the
// known_hosts check against the pinned key.
func (e *env) sshOptionsFor(vm, knownHosts string) ([]sshOption, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("the path of ember itself: %w", err)
	}
	proxy := shellQuote(self)
	if home := e.homeInUse(); home != "" {
		proxy += " --home " + shellQuote(home)
	}
	proxy += " ssh-proxy " + shellQuote(vm)
	kh, err := configQuote(knownHosts)
	if err != nil {
		return nil, err
	}
	return []sshOption{
		{"HostName", vm + sshDomain},
		{"User", guestproto.User},
		{"ProxyCommand", proxy},
		{"HostKeyAlias", vm + sshDomain},
		{"UserKnownHostsFile", kh},
		{"GlobalKnownHostsFile", "none"},
		{"StrictHostKeyChecking", "yes"},
		{"CheckHostIP", "no"},
		{"PasswordAuthentication", "no"},
		{"KbdInteractiveAuthentication", "no"},
	}, nil
}

// homeInUse is the --home or EMBER_HOME in effect, absolute; "" for the
// defaults.
func (e *env) homeInUse() string {
	h := e.home
	if h == "" {
		h = os.Getenv("EMBER_HOME")
	}
	if h == "" {
		return ""
	}
	return absPath(h)
}

const sshConfigHelp = `Print OpenSSH client config for every VM: a Host NAME.ember entry
whose ProxyCommand reaches the VM through the daemon's socket (so no port
needs to be open or stable), and whose host key is checked against the
agent's key that the daemon pinned at the VM's boot (a known_hosts file
per VM under ~/.config/ember/ssh, written now and again at every
connection).

The VM must have been created with your key (` + "`ember create --ssh-key`" + `,
by default your ~/.ssh/*.pub). You log in as root.

  ssh -F <(ember ssh-config) NAME.ember
  ember ssh-config > ~/.ssh/ember.conf    then, at the top of ~/.ssh/config:
  Include ~/.ssh/ember.conf               (for ssh, scp, sftp, rsync, VS Code)`

func sshConfigCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "ssh-config",
		Short: "Print OpenSSH config (Host NAME.ember) for every VM",
		Long:  sshConfigHelp,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			vms, err := client.Do(cmd.Context(), c, wire.VMList, wire.None{})
			if err != nil {
				return err
			}
			dir, err := sshFiles(c)
			if err != nil {
				return err
			}
			var b strings.Builder
			fmt.Fprintf(&b, "# ember ssh-config: the VMs of the daemon at %s.\n", c.Socket)
			b.WriteString("# Use: ssh -F <(ember ssh-config) NAME.ember, or save it and Include it\n")
			b.WriteString("# from ~/.ssh/config (ssh, scp, sftp, rsync, VS Code Remote-SSH).\n")
			for _, vm := range vms {
				if err := writeKnownHosts(dir, vm); err != nil {
					return err
				}
				opts, err := e.sshOptionsFor(vm.Name, knownHostsFile(dir, vm.Name))
				if err != nil {
					return err
				}
				fmt.Fprintf(&b, "\nHost %s%s\n", vm.Name, sshDomain)
				for _, o := range opts {
					fmt.Fprintf(&b, "  %s %s\n", o.key, o.value)
				}
			}
			_, err = io.WriteString(e.stdout, b.String())
			return err
		},
	}
}

// sshProxyCmd is the ProxyCommand of `ember ssh-config`: it refreshes the
// VM's known_hosts file with the key pinned at its current boot, then
// carries stdin and stdout to the agent's SSH port through the daemon.
func sshProxyCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:    "ssh-proxy VM",
		Short:  "Connect stdin and stdout to a VM's SSH port (the ProxyCommand of ssh-config)",
		Hidden: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, err := e.client()
			if err != nil {
				return err
			}
			vm, err := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: args[0]})
			if err != nil {
				return err
			}
			if dir, err := sshFiles(c); err == nil {
				if err := writeKnownHosts(dir, vm); err != nil {
					return err
				}
			}
			s, err := client.Open(ctx, c, wire.VMSSHProxy, wire.RefParams{Ref: vm.ID})
			if err != nil {
				return err
			}
			defer s.Close()
			err = proxyStream(ctx, s, e.stdin, e.stdout)
			var sig *signalled
			if errors.As(context.Cause(ctx), &sig) {
				// ssh ends its ProxyCommand with SIGHUP when it is done.
				return nil
			}
			return err
		},
	}
}

// proxyStream carries in to the stream and the stream's output to out
// until the daemon ends it.
func proxyStream(ctx context.Context, s *client.Stream, in io.Reader, out io.Writer) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := in.Read(buf)
			if n > 0 {
				if s.Send(wire.FrameStdin, buf[:n]) != nil {
					return
				}
			}
			if err != nil {
				_ = s.Send(wire.FrameStdinEOF, nil)
				return
			}
		}
	}()
	// The daemon sends only the guest's bytes and the end.
	return copyStream(ctx, s, out, io.Discard)
}

const sshHelp = `Run OpenSSH's ssh to a VM, through the daemon's socket, checking the
agent's host key the daemon pinned (as ` + "`ember ssh-config`" + ` writes it). With no
command it opens a login shell; ember's exit status is ssh's (the
command's, or 255 when ssh failed).

The arguments after ` + "`--`" + ` are the command and its arguments, each
quoted for the guest's shell, as ` + "`ember exec`" + ` takes them (plain ssh
joins them with spaces instead). The VM must have been created with your key
(` + "`ember create --ssh-key`" + `); you log in as root. Needs OpenSSH's client
(Debian: openssh-client).`

func sshCmd(e *env) *cobra.Command {
	var identities []string
	cmd := &cobra.Command{
		Use:               "ssh VM [-- CMD...]",
		Short:             "Run OpenSSH's ssh to a VM (your key, its pinned host key)",
		Long:              sshHelp,
		Args:              commandArgs(1),
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			vm, err := client.Do(cmd.Context(), c, wire.VMInspect, wire.RefParams{Ref: args[0]})
			if err != nil {
				return err
			}
			if vm.State != wire.StateRunning {
				// Said by ember, with its status, rather than by ssh
				// as a closed connection.
				return &wire.Error{Code: wire.CodeConflict, Message: fmt.Sprintf("vm %s is %s; `ember start %s` starts it", vm.Name, vm.State, vm.Name)}
			}
			dir, err := sshFiles(c)
			if err != nil {
				return err
			}
			if err := writeKnownHosts(dir, vm); err != nil {
				return err
			}
			opts, err := e.sshOptionsFor(vm.Name, knownHostsFile(dir, vm.Name))
			if err != nil {
				return err
			}
			bin, err := exec.LookPath("ssh")
			if err != nil {
				return errors.New("ember ssh runs OpenSSH's ssh, which is not installed (Debian: apt-get install openssh-client)")
			}
			for _, id := range identities {
				q, err := configQuote(absPath(id))
				if err != nil {
					return usagef(cmd, "-i: %v", err)
				}
				opts = append(opts, sshOption{"IdentityFile", q})
			}
			argv := sshArgv(opts, vm.Name, args[1:])
			return syscall.Exec(bin, argv, os.Environ())
		},
	}
	cmd.Flags().StringArrayVarP(&identities, "identity", "i", nil, "a private key file for ssh to log in with (repeatable; default: ssh's own, such as ~/.ssh/id_ed25519 or an agent's)")
	return cmd
}

// sshArgv is ssh's command line: the options (they come before any of
// the user's ssh_config), the host, and the command quoted for the
// guest's shell.
func sshArgv(opts []sshOption, vm string, command []string) []string {
	argv := []string{"ssh"}
	for _, o := range opts {
		// ssh reads an -o as a line of its config: quoted the same way.
		argv = append(argv, "-o", o.key+" "+o.value)
	}
	argv = append(argv, vm+sshDomain)
	if len(command) > 0 {
		quoted := make([]string, len(command))
		for i, a := range command {
			quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
		argv = append(argv, "--", strings.Join(quoted, " "))
	}
	return argv
}
