package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

func webCmd(e *env) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "web",
		Short: "Print the web dashboard's address, with its token",
		Long: "Print the address of the daemon's web dashboard (on 127.0.0.1) with its token. Open it once:\n" +
			"the browser keeps the token in a cookie and the address loses it. Anyone with the token has\n" +
			"the daemon's rights, as with its socket: keep it to yourself. `web = false` in the daemon's\n" +
			"config turns the dashboard off; `web_port` moves it (0: any free port).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := e.client()
			if err != nil {
				return err
			}
			info, err := client.Do(cmd.Context(), c, wire.DaemonWeb, wire.None{})
			if err != nil {
				return err
			}
			if asJSON {
				if err := printJSON(e.stdout, info); err != nil {
					return err
				}
			} else if info.URL != "" {
				fmt.Fprintln(e.stdout, info.URL)
			}
			if info.URL == "" {
				return &wire.Error{Code: wire.CodeConflict, Message: "no web dashboard: " + info.Reason}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
