package cli

import (
	"net"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// An operation's log reaches op wait's stderr once per line, in order,
// whatever snapshots without new lines come between (their log is
// omitted from the JSON, and must not bring the previous one's back).
func TestOpWaitPrintsEachLogLineOnce(t *testing.T) {
	fd := newFakeDaemon(t)
	op := wire.Operation{ID: "b1", Kind: wire.ImageBuild.Name, Target: "img", State: wire.OpRunning}
	fd.on(wire.OpWait.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		for _, s := range []struct {
			start int
			log   []string
		}{{0, []string{"step 1/2: RUN a", "out a"}}, {2, nil}, {2, []string{"step 2/2: RUN b"}}, {3, nil}, {3, []string{"out b"}}} {
			snap := op
			snap.LogStart, snap.Log = s.start, s.log
			snap.Progress = "step: " + strings.Join(s.log, ",")
			wire.WriteJSONFrame(c, wire.FrameStdout, snap)
		}
		final := op
		final.State, final.LogStart = wire.OpSucceeded, 4
		wire.WriteJSONFrame(c, wire.FrameStdout, final)
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{})
	})
	_, errOut, code := cli(fd.home, "op", "wait", "b1")
	if code != 0 {
		t.Fatalf("op wait: %d %s", code, errOut)
	}
	var lines []string
	for _, l := range strings.Split(errOut, "\n") {
		if l != "" && !strings.HasPrefix(l, "step: ") {
			lines = append(lines, l)
		}
	}
	if got := strings.Join(lines, "|"); got != "step 1/2: RUN a|out a|step 2/2: RUN b|out b" {
		t.Fatalf("log lines: %q (stderr %q)", got, errOut)
	}
}
