package cli

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/daemon"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/netconf"
)

func daemonCmd(e *env) *cobra.Command {
	var debug, cleanup bool
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon in the foreground",
		Long: "Run the daemon in the foreground. It reads its config, config.toml, when it starts: /etc/ember/config.toml as root,\n" +
			"$XDG_CONFIG_HOME/ember/config.toml (~/.config/ember) otherwise, DIR/config.toml with --home DIR or EMBER_HOME=DIR;\n" +
			"`ember doctor` names the one this layout uses. Every key has a default (README.md, \"Configuration\").",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cleanup {
				return cleanupNetwork(e)
			}
			// A daemon keeps SIGQUIT's goroutine dump, for whoever
			// debugs it; the rest of interruptSignals stop it.
			signal.Reset(syscall.SIGQUIT)
			level := slog.LevelInfo
			if debug {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			d, err := daemon.Open(cmd.Context(), daemon.Options{Home: e.home, Logger: log})
			if err != nil {
				return err
			}
			defer d.Close()
			return d.Serve(cmd.Context())
		},
	}
	cmd.Flags().BoolVar(&debug, "debug", false, "log debug details")
	cmd.Flags().BoolVar(&cleanup, "cleanup", false, "remove the host networking ember set up (nftables table, TAPs, bridge) and exit")
	return cmd
}

// cleanupNetwork undoes what a tap-mode daemon set up in this network
// namespace. It refuses while a daemon runs: that daemon would rebuild it.
func cleanupNetwork(e *env) error {
	lay, err := layout.Resolve(e.home)
	if err != nil {
		return err
	}
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return err
	}
	if c, err := net.DialTimeout("unix", lay.Socket(), time.Second); err == nil {
		c.Close()
		return fmt.Errorf("a daemon answers on %s; stop it before --cleanup", lay.Socket())
	}
	done, err := netconf.Cleanup(cfg.NFTable, cfg.Bridge, cfg.TAPPrefix)
	for _, d := range done {
		fmt.Fprintln(e.stdout, "removed", d)
	}
	if len(done) == 0 && err == nil {
		fmt.Fprintln(e.stdout, "nothing to remove")
	}
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	return nil
}
