package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/wire"
)

// guestUptime is the guest's /proc/uptime in seconds.
func (e *env) guestUptime(vm string) float64 {
	e.t.Helper()
	out := e.must("exec", vm, "--", "cat", "/proc/uptime")
	f, err := strconv.ParseFloat(strings.Fields(out)[0], 64)
	if err != nil {
		e.t.Fatalf("uptime %q: %v", out, err)
	}
	return f
}

// issue 9, promote: a file written in a running VM is in the image
// promoted from it and in a VM created from that image; the first VM never
// stopped (same QEMU process, its session still attached, its uptime
// continuous) and still works, its filesystem thawed. A stopped VM
// promotes too; a taken name, an unknown VM and a bad name are refused.
func TestPromote(t *testing.T) {
	e := newEnv(t)
	e.must("create", "src")
	e.must("exec", "src", "--", "sh", "-c", "echo promoted-content > /root/marker")
	e.must("session", "new", "src", "s1")
	a := e.attach("src", "s1")
	poll(t, "session attached", func() bool { return e.sessions("src")["s1"].Attached == 1 })
	before := e.inspect("src")
	upBefore := e.guestUptime("src")

	var img wire.Image
	if err := json.Unmarshal([]byte(e.must("image", "promote", "src", "snap", "--json")), &img); err != nil {
		t.Fatal(err)
	}
	if img.Name != "snap" || img.Kind != "promoted" || img.Parent != "tiny" || img.Format != "raw" {
		t.Fatalf("promoted image: %+v", img)
	}

	after := e.inspect("src")
	if after.State != wire.StateRunning || after.PID != before.PID || after.PID == 0 {
		t.Fatalf("vm after promote: %s pid %d, before: pid %d", after.State, after.PID, before.PID)
	}
	if up := e.guestUptime("src"); up <= upBefore {
		t.Fatalf("guest uptime %v after promote, %v before: the guest rebooted", up, upBefore)
	}
	select {
	case <-a.done:
		t.Fatalf("the session's client ended during promote: %s", a.out.String())
	default:
	}
	if s := e.sessions("src")["s1"]; s.Attached != 1 || s.State != wire.SessionRunning {
		t.Fatalf("session after promote: %+v", s)
	}
	// The agent froze and thawed the guest's root filesystem.
	if logs := e.must("logs", "src"); !strings.Contains(logs, "ember-agent: froze the root filesystem for the host") ||
		!strings.Contains(logs, "ember-agent: thawed the root filesystem") {
		t.Fatalf("no freeze and thaw on the console:\n%s", logs)
	}
	// Thawed: writes go through, in a command and in the session.
	e.must("exec", "src", "--", "sh", "-c", "echo later > /root/after && sync")
	e.must("session", "send", "src", "s1", "--enter", "echo after-promote-$((1+1)) > /root/s1 && cat /root/s1")
	poll(t, "session output after promote", func() bool { return e.readHas("src", "s1", "after-promote-2") })

	// A VM from the image has the file written before the promote, not
	// the one written after.
	e.must("create", "child", "--image", "snap")
	if out := e.must("exec", "child", "--", "cat", "/root/marker"); out != "promoted-content\n" {
		t.Fatalf("marker in the new vm: %q", out)
	}
	if _, _, code := e.run("exec", "child", "--", "test", "-e", "/root/after"); code == 0 {
		t.Fatal("a file written after the promote is in the image")
	}
	e.must("rm", "-f", "child")

	// Refusals: nothing registered, the VM untouched.
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"image", "promote", "src", "snap"}, 4, `an image named "snap" already exists`},
		{[]string{"image", "promote", "nope", "x"}, 3, `vm "nope" not found`},
		{[]string{"image", "promote", "src", "Bad_Name"}, 2, `image name "Bad_Name" is not valid`},
	} {
		if _, errOut, code := e.run(tc.args...); code != tc.code || !strings.Contains(errOut, tc.msg) {
			t.Errorf("ember %s: exit %d %q, want %d %q", strings.Join(tc.args, " "), code, errOut, tc.code, tc.msg)
		}
	}

	// A stopped VM is copied as it is.
	e.must("stop", "src")
	e.must("image", "promote", "src", "snap2")
	if st := e.inspect("src").State; st != wire.StateStopped {
		t.Fatalf("stopped vm is %s after promote", st)
	}
	e.must("create", "child2", "--image", "snap2")
	if out := e.must("exec", "child2", "--", "cat", "/root/marker", "/root/after"); out != "promoted-content\nlater\n" {
		t.Fatalf("files in the vm from the stopped vm's image: %q", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.home, "state", "images")); len(entries) != 3 {
		t.Fatalf("images folder holds %d files, want tiny's and the two promoted", len(entries))
	}
	// A promoted image is an image like any other: refused while used,
	// removed with its file once not.
	if _, errOut, code := e.run("image", "rm", "snap2"); code == 0 || !strings.Contains(errOut, "child2") {
		t.Fatalf("image rm of an image in use: exit %d %q", code, errOut)
	}
	e.must("rm", "-f", "child2")
	e.must("image", "rm", "snap2")
	if entries, _ := os.ReadDir(filepath.Join(e.home, "state", "images")); len(entries) != 2 {
		t.Fatalf("images folder holds %d files after image rm, want tiny's and snap's", len(entries))
	}
	var imgs []wire.Image
	if err := json.Unmarshal([]byte(e.must("image", "ls", "--json")), &imgs); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, img := range imgs {
		names = append(names, img.Name)
	}
	if !slices.Contains(names, "tiny") || !slices.Contains(names, "snap") || slices.Contains(names, "snap2") {
		t.Fatalf("images: %v, want tiny and snap, and snap2 no more", names)
	}
}
