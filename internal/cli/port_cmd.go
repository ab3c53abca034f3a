package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// portCmd is `ember port add|rm|ls VM`: a VM's port forwards (the port
// capability, `ember create --cap port=...`), and with --to-host the
// host ports its guest reaches at host.ember.internal (the hostport
// capability, `--cap hostport=...`).
func portCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "port", Short: "Forward host ports (loopback) to ports in a VM, or open host ports to it"}
	var addJSON, addToHost bool
	add := &cobra.Command{
		Use:   "add VM [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp] | add VM --to-host HOSTPORT[:GUESTPORT][/tcp]",
		Short: "Listen on a host port and forward each connection to a port in the VM (kept across restarts)",
		Long: `Listen on a host port and forward each connection to a port in the VM
(kept across restarts).

With --to-host it goes the other way: the guest reaches 127.0.0.1:HOSTPORT
on the host at host.ember.internal:GUESTPORT (GUESTPORT defaults to
HOSTPORT), and no other host port.`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			p, err := client.Do(cmd.Context(), c, wire.PortAdd, wire.PortParams{Ref: args[0], Spec: args[1], ToHost: addToHost})
			if err != nil {
				return err
			}
			if addJSON {
				return printJSON(e.stdout, p)
			}
			_, err = fmt.Fprintln(e.stdout, portLine(p))
			return err
		},
	}
	add.Flags().BoolVar(&addJSON, "json", false, "print the forward as JSON")
	add.Flags().BoolVar(&addToHost, "to-host", false, "open a host port to the guest at host.ember.internal instead")
	var rmToHost bool
	rm := &cobra.Command{
		Use:               "rm VM [HOSTADDR:]HOSTPORT[:GUESTPORT] | rm VM --to-host GUESTPORT",
		Short:             "Close a port forward and forget it",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.PortRemove, wire.PortParams{Ref: args[0], Spec: args[1], ToHost: rmToHost})
			return err
		},
	}
	rm.Flags().BoolVar(&rmToHost, "to-host", false, "close a host port opened to the guest (named by its port at host.ember.internal)")
	var lsJSON bool
	ls := &cobra.Command{
		Use:               "ls VM",
		Short:             "List a VM's port forwards",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			ports, err := client.Do(cmd.Context(), c, wire.PortList, wire.RefParams{Ref: args[0]})
			if err != nil {
				return err
			}
			if lsJSON {
				return printJSON(e.stdout, ports)
			}
			t := table(e.stdout)
			fmt.Fprintln(t, "HOST\tDIRECTION\tGUEST\tPROTO\tSTATE")
			for _, p := range ports {
				state := "closed (vm not running)"
				if p.Listening {
					state = "listening"
				}
				if p.ToHost {
					fmt.Fprintf(t, "%s:%d\t<-\t%s:%d\t%s\t%s\n", p.HostAddr, p.HostPort, p.GuestName, p.GuestPort, p.Proto, state)
					continue
				}
				fmt.Fprintf(t, "%s:%d\t->\t%d\t%s\t%s\n", p.HostAddr, p.HostPort, p.GuestPort, p.Proto, state)
			}
			return t.Flush()
		},
	}
	ls.Flags().BoolVar(&lsJSON, "json", false, "print a JSON array")
	cmd.AddCommand(add, rm, ls)
	return cmd
}

func portLine(p wire.Port) string {
	if p.ToHost {
		s := fmt.Sprintf("%s:%d/%s in %s -> %s:%d on the host", p.GuestName, p.GuestPort, p.Proto, p.VM, p.HostAddr, p.HostPort)
		if !p.Listening {
			s += " (opens when the vm runs)"
		}
		return s
	}
	s := fmt.Sprintf("%s:%d -> %s:%d/%s", p.HostAddr, p.HostPort, p.VM, p.GuestPort, p.Proto)
	if !p.Listening {
		s += " (listens when the vm runs)"
	}
	return s
}
