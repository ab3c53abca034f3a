package agent

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// Main is the whole program: init mode when running as PID 1, otherwise
// the subcommand in os.Args. It does not return.
func Main() {
	if os.Getpid() == 1 {
		runInit() // never returns
	}
	args := os.Args[1:]
	if len(args) > 0 && args[0] == "serve" {
		os.Exit(serveMain(args[1:], os.Stderr))
	}
	fmt.Fprintln(os.Stderr, "usage: ember-agent serve [--listen ADDR] (--authorized-key FILE | --from-cmdline) [--host-key FILE | --host-key-fd N]")
	fmt.Fprintln(os.Stderr, "       (as PID 1 it boots the VM; see package documentation)")
	os.Exit(2)
}

// serveMain runs the SSH server until SIGTERM/SIGINT and returns an exit
// code. Under init it is started as "serve --from-cmdline".
func serveMain(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "", "address to listen on (default :PORT from ember.port, or :22)")
	keyFile := fs.String("authorized-key", "", "file with the one accepted public key (authorized_keys format)")
	hostKeyFile := fs.String("host-key", "", "private host key file (default: generate an ed25519 key)")
	hostKeyFD := fs.Int("host-key-fd", -1, "read the private host key (PEM) from this file descriptor, as init passes it")
	keyOutFD := fs.Int("key-out-fd", -1, "write a new host key (PEM) a reidentify makes to this file descriptor, as init passes it")
	fromCmdline := fs.Bool("from-cmdline", false, "take key and port from ember.* in /proc/cmdline")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, guestproto.ConsolePrefix+"error: %v\n", err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg := ServerConfig{Logger: log}
	addr := *listen
	switch {
	case *fromCmdline:
		raw, err := os.ReadFile("/proc/cmdline")
		if err != nil {
			return fail(fmt.Errorf("read kernel command line: %w", err))
		}
		boot, err := ParseCmdline(string(raw))
		if err != nil {
			return fail(err)
		}
		if boot.Key == nil {
			return fail(fmt.Errorf("no ember.key on the kernel command line"))
		}
		cfg.AuthorizedKey = boot.Key
		// In a VM (its kernel named the key): / is the guest's disk.
		cfg.Freeze = freezeRootLogged
		cfg.Reidentify = becomeNew
		cfg.SetClock = stepClock
		cfg.Renumber = renumber
		if addr == "" {
			addr = ":" + strconv.Itoa(boot.Port)
		}
		if os.Getppid() == 1 {
			// PID 1 owns the shutdown sequence; SIGUSR2 asks it for a
			// power-off (SIGTERM would reboot: shutdownSignals).
			cfg.Poweroff = func() error { return unix.Kill(1, unix.SIGUSR2) }
		}
	case *keyFile != "":
		raw, err := os.ReadFile(*keyFile)
		if err != nil {
			return fail(fmt.Errorf("read authorized key: %w", err))
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey(raw)
		if err != nil {
			return fail(fmt.Errorf("parse authorized key %s: %w", *keyFile, err))
		}
		cfg.AuthorizedKey = k
	default:
		return fail(fmt.Errorf("serve needs --authorized-key or --from-cmdline"))
	}
	if addr == "" {
		addr = ":" + strconv.Itoa(guestproto.DefaultPort)
	}
	if *hostKeyFile != "" {
		raw, err := os.ReadFile(*hostKeyFile)
		if err != nil {
			return fail(fmt.Errorf("read host key: %w", err))
		}
		cfg.HostKey, err = ssh.ParsePrivateKey(raw)
		if err != nil {
			return fail(fmt.Errorf("parse host key %s: %w", *hostKeyFile, err))
		}
	}
	if *hostKeyFD >= 0 {
		f := os.NewFile(uintptr(*hostKeyFD), "host-key")
		if f == nil {
			return fail(fmt.Errorf("host key: no file descriptor %d", *hostKeyFD))
		}
		var err error
		cfg.HostKey, err = readHostKey(f)
		f.Close() // commands the server starts do not inherit it
		if err != nil {
			return fail(err)
		}
	}
	if *keyOutFD >= 0 {
		f := os.NewFile(uintptr(*keyOutFD), "key-out")
		if f == nil {
			return fail(fmt.Errorf("key out: no file descriptor %d", *keyOutFD))
		}
		unix.CloseOnExec(*keyOutFD) // commands the server starts do not inherit it
		cfg.KeyOut = func(p []byte) error { _, err := f.Write(p); return err }
	}
	srv, err := NewServer(cfg)
	if err != nil {
		return fail(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fail(fmt.Errorf("listen: %w", err))
	}
	ready := guestproto.ReadyMessage(ln.Addr().String(), srv.HostKey())
	if *fromCmdline {
		fmt.Fprintf(stderr, "%s (kernel uptime %s s)\n", ready, uptime())
	} else {
		fmt.Fprintln(stderr, ready)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil {
		return fail(err)
	}
	return 0
}
