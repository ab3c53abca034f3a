package cli

import (
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// eventsCmd is `ember events`: the daemon's lifecycle events as they
// happen, one line (or JSON object) each, until Ctrl-C (status 0). When
// the daemon restarts it says so on stderr and goes on after the last
// event it printed.
func eventsCmd(e *env) *cobra.Command {
	var asJSON bool
	var since time.Duration
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print VM, operation, image, session and port events as they happen",
		Long: `Print VM, operation, image, session and port events as they happen, until
Ctrl-C. --since first prints the events of that recent past that the daemon
still keeps (its last 1024). A "gap" line stands where events were lost
(dropped before they were read, or kept by a daemon that has restarted).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if since < 0 {
				return usagef(cmd, "--since %s: a duration back from now is 0 or more", since)
			}
			// Whole seconds, rounded up: --since never shows less than asked.
			secs := int64(math.Ceil(since.Seconds()))
			if secs > wire.MaxEventsSinceSeconds {
				return usagef(cmd, "--since %s: at most %s (the daemon keeps its recent events only)",
					since, time.Duration(wire.MaxEventsSinceSeconds)*time.Second)
			}
			c, err := e.client()
			if err != nil {
				return err
			}
			show := func(ev wire.Event) error {
				if asJSON {
					b, err := json.Marshal(ev)
					if err != nil {
						return err
					}
					_, err = e.stdout.Write(append(b, '\n'))
					return err
				}
				_, err := fmt.Fprintln(e.stdout, eventLine(ev))
				return err
			}
			notice := func(msg string) { fmt.Fprintln(e.stderr, "ember: events: "+msg) }
			return client.FollowEvents(cmd.Context(), c, wire.EventsParams{SinceSeconds: secs}, show, notice)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print each event as one JSON object per line")
	cmd.Flags().DurationVar(&since, "since", 0, "first print the kept events of this recent past (e.g. 10m)")
	return cmd
}

// eventLine is an event as one line: time, type, subject, detail. Its
// text may come from a guest (an error with console lines), so it is
// cleaned of control sequences and kept to one line.
func eventLine(ev wire.Event) string {
	subject := ev.Subject
	if ev.VM != "" && ev.VM != ev.Subject {
		subject = ev.VM + "/" + ev.Subject
	}
	var detail []string
	for _, s := range []string{ev.OpKind, ev.Target, ev.State, firstLine(ev.Detail)} {
		if s != "" {
			detail = append(detail, s)
		}
	}
	if subject == "" {
		subject = "-"
	}
	line := fmt.Sprintf("%s  %-16s %-20s %s", ev.Time.Local().Format("2006-01-02T15:04:05.000Z07:00"),
		ev.Type, subject, strings.Join(detail, " "))
	return termtext.Clean(strings.TrimRight(line, " "))
}
