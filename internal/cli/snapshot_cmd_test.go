package cli

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

// snapshot ls names each snapshot's VM, image (and whether it went),
// memory and size; snapshot rm goes on past an unknown name, says which,
// and exits 3 as the other rm commands do; snapshot inspect prints JSON.
func TestSnapshotCommands(t *testing.T) {
	fd := newFakeDaemon(t)
	snaps := []wire.Snapshot{
		{Name: "s1", VM: "web", Image: "tiny", CPUs: 1, MemoryMiB: 256, SizeBytes: 90 << 20, CreatedAt: time.Now().Add(-time.Hour)},
		{Name: "s2", VM: "db", Image: "own", ImageGone: "deleted", CPUs: 2, MemoryMiB: 512, SizeBytes: 3 << 30, CreatedAt: time.Now()},
	}
	fd.result(wire.SnapshotList.Name, snaps)
	fd.on(wire.SnapshotRemove.Name, func(req wire.Request, c net.Conn) {
		var p wire.SnapshotParams
		json.Unmarshal(req.Params, &p)
		if p.Name == "nope" {
			reply(c, wire.Response{Error: &wire.Error{Code: wire.CodeNotFound, Message: `no snapshot named "nope"; ` + "`ember snapshot ls` lists snapshots"}})
			return
		}
		replyResult(c, wire.None{})
	})
	fd.on(wire.SnapshotInspect.Name, func(req wire.Request, c net.Conn) {
		var p wire.RefParams
		json.Unmarshal(req.Params, &p)
		replyResult(c, snaps[1])
	})

	out, errOut, code := cli(fd.home, "snapshot", "ls")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || strings.Fields(lines[0])[2] != "IMAGE" ||
		!strings.Contains(lines[1], "web") || !strings.Contains(lines[1], "256M") || !strings.Contains(lines[1], "90M") ||
		!strings.Contains(lines[2], "own (deleted)") || !strings.Contains(lines[2], "512M") {
		t.Fatalf("snapshot ls: exit %d %q\n%s", code, errOut, out)
	}
	out, errOut, code = cli(fd.home, "snapshot", "ls", "--json")
	var got []wire.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 2 || got[1].ImageGone != "deleted" {
		t.Fatalf("snapshot ls --json: exit %d %q\n%s", code, errOut, out)
	}

	out, errOut, code = cli(fd.home, "snapshot", "rm", "nope")
	if code != 3 || !strings.Contains(errOut, `no snapshot named "nope"`) || out != "" {
		t.Fatalf("snapshot rm nope: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	out, errOut, code = cli(fd.home, "snapshot", "rm", "nope", "s1")
	if code != 3 || !strings.Contains(errOut, `no snapshot named "nope"`) || out != "s1\n" {
		t.Fatalf("snapshot rm nope s1: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	out, errOut, code = cli(fd.home, "snapshot", "inspect", "s2")
	var one []wire.Snapshot
	if code != 0 || json.Unmarshal([]byte(out), &one) != nil || len(one) != 1 || one[0].Name != "s2" || one[0].ImageGone != "deleted" {
		t.Fatalf("snapshot inspect: exit %d %q\n%s", code, errOut, out)
	}
}

// snapshot ls asks for the warm snapshots only with --all (the daemon
// leaves them out otherwise), and shows every snapshot's size on disk,
// in the table and in --json.
func TestSnapshotLsAll(t *testing.T) {
	fd := newFakeDaemon(t)
	user := wire.Snapshot{Name: "s1", VM: "web", Image: "tiny", CPUs: 1, MemoryMiB: 256, SizeBytes: 90 << 20, CreatedAt: time.Now()}
	warm := wire.Snapshot{Name: ".warm-0123456789abcdef01234567", VM: "web", Image: "tiny", CPUs: 1, MemoryMiB: 256, SizeBytes: 70 << 20, CreatedAt: time.Now()}
	var asked []string
	fd.on(wire.SnapshotList.Name, func(req wire.Request, c net.Conn) {
		asked = append(asked, string(req.Params))
		var p wire.SnapshotListParams
		json.Unmarshal(req.Params, &p)
		if p.All {
			replyResult(c, []wire.Snapshot{user, warm})
			return
		}
		replyResult(c, []wire.Snapshot{user})
	})
	out, errOut, code := cli(fd.home, "snapshot", "ls")
	if code != 0 || strings.Contains(out, ".warm-") || !strings.Contains(out, "90M") {
		t.Fatalf("snapshot ls: exit %d %q\n%s", code, errOut, out)
	}
	out, errOut, code = cli(fd.home, "snapshot", "ls", "--all")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 || !strings.HasPrefix(lines[2], warm.Name) || !strings.Contains(lines[2], "70M") {
		t.Fatalf("snapshot ls --all: exit %d %q\n%s", code, errOut, out)
	}
	out, errOut, code = cli(fd.home, "snapshot", "ls", "-a", "--json")
	var got []map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &got) != nil || len(got) != 2 || got[1]["name"] != warm.Name || got[1]["size_bytes"] != float64(70<<20) {
		t.Fatalf("snapshot ls -a --json: exit %d %q\n%s", code, errOut, out)
	}
	// Without --all the request is what an older client sent: no field.
	if len(asked) != 3 || asked[0] != "{}" || asked[1] != `{"all":true}` || asked[2] != `{"all":true}` {
		t.Fatalf("params sent: %q", asked)
	}
}
