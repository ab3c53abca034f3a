package cli

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/daemon"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// versions is what `ember version --json` prints; Daemon is null when no
// daemon answers.
type versions struct {
	Client clientVersion    `json:"client"`
	Daemon *wire.DaemonInfo `json:"daemon"`
}

type clientVersion struct {
	Version   string `json:"version"`
	GoVersion string `json:"go_version"`
}

func versionCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the client's and the daemon's versions, the hypervisor's and the accelerator",
		Long: "Print the client's and the daemon's versions, the hypervisor's and the accelerator VMs boot with.\n" +
			"Without a daemon it prints the client's and fails.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := versions{Client: clientVersion{Version: daemon.Version, GoVersion: runtime.Version()}}
			var derr error
			if c, err := e.client(); err != nil {
				derr = err
			} else if info, err := client.Do(cmd.Context(), c, wire.DaemonInfoMethod, wire.None{}); err != nil {
				derr = err
			} else {
				v.Daemon = &info
			}
			if asJSON {
				if err := printJSON(e.stdout, v); err != nil {
					return err
				}
			} else {
				printVersions(e, v)
			}
			return derr
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func printVersions(e *env, v versions) {
	tw := table(e.stdout)
	fmt.Fprintf(tw, "client:\tember %s (%s)\n", v.Client.Version, v.Client.GoVersion)
	if d := v.Daemon; d != nil {
		fmt.Fprintf(tw, "daemon:\tember %s (%s), pid %d, %s\n", d.Version, d.GoVersion, d.PID, d.Socket)
		hv := d.Hypervisor
		if d.HypervisorVersion != "" {
			hv += ": " + d.HypervisorVersion
		} else {
			hv += " (its version is unknown)"
		}
		fmt.Fprintf(tw, "hypervisor:\t%s\n", hv)
		accel := d.Accel
		switch {
		case accel == "":
			accel = "not decided yet (the daemon is trying KVM)"
		case d.Reason != "":
			accel += ": " + d.Reason
		}
		fmt.Fprintf(tw, "accel:\t%s\n", termtext.Clean(accel))
		if d.StandbyVMs > 0 {
			fmt.Fprintf(tw, "standby vms:\t%d restored in advance (standby_vms)\n", d.StandbyVMs)
		}
	}
	_ = tw.Flush()
}
