package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// portCmd is `ember port add|rm|ls VM`: a VM's port forwards (the port
// capability, `ember create --cap port=...`).
func portCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{Use: "port", Short: "Forward host ports (loopback) to ports in a VM"}
	var addJSON bool
	add := &cobra.Command{
		Use:               "add VM [HOSTADDR:]HOSTPORT:GUESTPORT[/tcp]",
		Short:             "Listen on a host port and forward each connection to a port in the VM (kept across restarts)",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			p, err := client.Do(cmd.Context(), c, wire.PortAdd, wire.PortParams{Ref: args[0], Spec: args[1]})
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
	rm := &cobra.Command{
		Use:               "rm VM [HOSTADDR:]HOSTPORT[:GUESTPORT]",
		Short:             "Close a port forward and forget it",
		ValidArgsFunction: completeArgs(e, false, vmNames),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			_, err = client.Do(cmd.Context(), c, wire.PortRemove, wire.PortParams{Ref: args[0], Spec: args[1]})
			return err
		},
	}
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
			fmt.Fprintln(t, "HOST\tGUEST\tPROTO\tSTATE")
			for _, p := range ports {
				state := "closed (vm not running)"
				if p.Listening {
					state = "listening"
				}
				fmt.Fprintf(t, "%s:%d\t%d\t%s\t%s\n", p.HostAddr, p.HostPort, p.GuestPort, p.Proto, state)
			}
			return t.Flush()
		},
	}
	ls.Flags().BoolVar(&lsJSON, "json", false, "print a JSON array")
	cmd.AddCommand(add, rm, ls)
	return cmd
}

func portLine(p wire.Port) string {
	s := fmt.Sprintf("%s:%d -> %s:%d/%s", p.HostAddr, p.HostPort, p.VM, p.GuestPort, p.Proto)
	if !p.Listening {
		s += " (listens when the vm runs)"
	}
	return s
}
