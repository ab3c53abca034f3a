package e2e

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// A VM with a file written and a session running is snapshotted (and
// runs on); two VMs made from the snapshot have the file and the
// session's scrollback, the session takes input, and each is a machine
// of its own: its own hostname, host key and random bytes, its clock
// the host's. A create asking other memory boots the snapshot's disk
// instead and says why; a snapshot in use cannot be removed.
func TestSnapshotRestoreRealVM(t *testing.T) {
	e := newEnv(t)
	e.must("create", "orig")
	e.must("exec", "orig", "--", "sh", "-c", "echo kept-data > /root/file && sync")
	e.must("session", "new", "orig", "s1")
	// session run waits for the command's end (a wait after a send could
	// start after the output came).
	if out := e.must("session", "run", "orig", "s1", "--timeout", "60s", "--", "echo", "before-snapshot-marker"); !strings.Contains(out, "before-snapshot-marker") {
		t.Fatalf("session run in orig: %q", out)
	}

	e.must("snapshot", "create", "orig", "snap1")
	if out := e.must("snapshot", "ls"); !strings.Contains(out, "snap1") || !strings.Contains(out, "orig") {
		t.Fatalf("snapshot ls:\n%s", out)
	}
	// The saved VM runs on.
	if out := e.must("exec", "orig", "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
		t.Fatalf("the snapshotted vm: %q", out)
	}

	keys := map[string]string{}
	rand := map[string]string{}
	for _, name := range []string{"copy1", "copy2"} {
		start := time.Now()
		e.must("create", "--snapshot", "snap1", name)
		t.Logf("create --snapshot %s: %v", name, time.Since(start).Round(time.Millisecond))
		rand[name] = e.must("exec", name, "--", "sh", "-c", "head -c 16 /dev/urandom | od -x")
		if out := e.must("exec", name, "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
			t.Fatalf("%s: the file: %q", name, out)
		}
		checkNewMachine(t, e, name)
		if got := e.must("session", "read", "orig", "s1"); !strings.Contains(got, "before-snapshot-marker") {
			t.Fatalf("orig's session: %q", got)
		}
		if got := e.must("session", "read", name, "s1"); !strings.Contains(got, "before-snapshot-marker") {
			t.Fatalf("%s: the session's scrollback: %q", name, got)
		}
		if out := e.must("session", "run", name, "s1", "--timeout", "60s", "--", "echo", "after-restore-"+name); !strings.Contains(out, "after-restore-"+name) {
			t.Fatalf("%s: the restored session's input: %q", name, out)
		}
		keys[name] = e.inspect(name).HostKey
	}
	orig := e.inspect("orig").HostKey
	if keys["copy1"] == "" || keys["copy1"] == keys["copy2"] || keys["copy1"] == orig || keys["copy2"] == orig {
		t.Fatalf("host keys: orig %q, copy1 %q, copy2 %q", orig, keys["copy1"], keys["copy2"])
	}
	if rand["copy1"] == rand["copy2"] {
		t.Fatalf("two restored vms read the same random bytes: %q", rand["copy1"])
	}
	// The agent's server dies and init starts it again: the new server
	// holds the new key too, so the daemon's next dial meets its pin.
	e.must("exec", "copy1", "--", "setsid", "sh", "-c", `(sleep 1; for d in /proc/[0-9]*; do
  if tr '\0' ' ' < $d/cmdline 2>/dev/null | grep -q '^ember-agent serve'; then kill -9 ${d#/proc/}; fi
done) </dev/null >/dev/null 2>&1 &`)
	time.Sleep(3 * time.Second)
	var lastErr string
	for i := 0; i < 20; i++ {
		out, errOut, code := e.run("exec", "copy1", "--", "cat", "/root/file")
		if code == 0 && strings.TrimSpace(out) == "kept-data" {
			lastErr = ""
			break
		}
		lastErr = errOut
		time.Sleep(500 * time.Millisecond)
	}
	if lastErr != "" {
		t.Fatalf("exec after the agent's server restarted: %s", lastErr)
	}
	if got := e.inspect("copy1").HostKey; got != keys["copy1"] {
		t.Fatalf("the host key changed again: %q, was %q", got, keys["copy1"])
	}

	// Other memory: the disk boots, and the operation said why.
	out, errOut, code := e.run("create", "--snapshot", "snap1", "--memory", "320", "cold")
	if code != 0 {
		t.Fatalf("create --snapshot with other memory: exit %d: %s", code, errOut)
	}
	if !strings.Contains(out+errOut, "cannot be restored here") && !strings.Contains(e.log.String(), "create from a snapshot boots its disk instead") {
		t.Errorf("no reason for the cold boot: %s%s", out, errOut)
	}
	if got := e.must("exec", "cold", "--", "cat", "/root/file"); strings.TrimSpace(got) != "kept-data" {
		t.Fatalf("the cold-booted copy: %q", got)
	}
	if vm := e.inspect("cold"); vm.MemoryMiB != 320 {
		t.Fatalf("cold: %+v", vm)
	}

	if _, errOut, code := e.run("snapshot", "rm", "snap1"); code != 4 || !strings.Contains(errOut, "in use") {
		t.Fatalf("rm of a snapshot in use: exit %d: %s", code, errOut)
	}
	if _, errOut, code := e.run("create", "--snapshot", "nope", "x"); code != 3 {
		t.Fatalf("create from a missing snapshot: exit %d: %s", code, errOut)
	}
	// ember restore: orig goes back to the snapshot, as itself.
	e.must("exec", "orig", "--", "sh", "-c", "echo changed > /root/file && sync")
	before := e.inspect("orig")
	e.must("restore", "orig", "snap1")
	after := e.inspect("orig")
	if after.State != "running" || after.PID == before.PID || after.HostKey == before.HostKey || after.ID != before.ID {
		t.Fatalf("restore: before %+v, after %+v", before, after)
	}
	if out := e.must("exec", "orig", "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
		t.Fatalf("after restore, the file: %q", out)
	}
	if out := e.must("exec", "orig", "--", "hostname"); strings.TrimSpace(out) != "orig" {
		t.Fatalf("after restore, hostname %q", out)
	}
	if got := e.must("session", "read", "orig", "s1"); !strings.Contains(got, "before-snapshot-marker") {
		t.Fatalf("after restore, the session: %q", got)
	}
	if _, errOut, code := e.run("restore", "cold", "snap1"); code != 4 || !strings.Contains(errOut, "cannot be restored") {
		t.Fatalf("restore of a vm with other memory: exit %d: %s", code, errOut)
	}

	e.must("rm", "-f", "copy1", "copy2", "cold", "orig")
	e.must("snapshot", "rm", "snap1")
	if out := e.must("snapshot", "ls"); strings.Contains(out, "snap1") {
		t.Fatalf("after rm: %s", out)
	}
}

// Warm images: the first create of an image saves its warm snapshot; the
// creates that follow restore it (the operation says so) and each is a
// machine of its own (hostname, host key, random bytes, the host's
// clock); exec works; `snapshot ls` does not list it.
func TestWarmImageRealVM(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"warm_images = true\n", nil)
	_, errOut, code := e.run("create", "w1")
	if code != 0 || strings.Contains(e.inspect("w1").AccelReason, "restored") {
		t.Fatalf("first create: exit %d: %s", code, errOut)
	}
	if out := e.must("exec", "w1", "--", "hostname"); strings.TrimSpace(out) != "w1" {
		t.Fatalf("w1 hostname %q", out)
	}
	rand := map[string]string{}
	keys := map[string]string{}
	for _, name := range []string{"w2", "w3"} {
		start := time.Now()
		_, errOut, code := e.run("create", name)
		t.Logf("create %s: %v", name, time.Since(start).Round(time.Millisecond))
		if code != 0 {
			t.Fatalf("create %s: exit %d: %s", name, code, errOut)
		}
		// Restored, not booted: its record says so, and its console
		// shows no boot.
		if vm := e.inspect(name); !strings.Contains(vm.AccelReason, "restored from a snapshot") {
			t.Fatalf("%s was not restored: %+v", name, vm)
		}
		if logs := e.must("logs", name); strings.Contains(logs, "ember-agent: start") {
			t.Fatalf("%s booted:\n%s", name, logs)
		}
		rand[name] = e.must("exec", name, "--", "sh", "-c", "head -c 16 /dev/urandom | od -x")
		checkNewMachine(t, e, name)
		keys[name] = e.inspect(name).HostKey
	}
	if rand["w2"] == rand["w3"] || keys["w2"] == keys["w3"] || keys["w2"] == e.inspect("w1").HostKey {
		t.Fatalf("restored vms alike: random %q %q, keys %q %q", rand["w2"], rand["w3"], keys["w2"], keys["w3"])
	}
	if out := e.must("snapshot", "ls"); strings.Contains(out, ".warm") {
		t.Fatalf("snapshot ls lists the warm snapshot:\n%s", out)
	}
	// A restored VM's next start boots its own disk, made on the warm
	// snapshot's.
	e.must("exec", "w2", "--", "sh", "-c", "echo w2-data > /root/mine && sync")
	e.must("restart", "w2")
	if vm := e.inspect("w2"); strings.Contains(vm.AccelReason, "restored") {
		t.Fatalf("w2 restarted from the snapshot again: %+v", vm)
	}
	if out := e.must("exec", "w2", "--", "cat", "/root/mine"); strings.TrimSpace(out) != "w2-data" {
		t.Fatalf("w2 after restart: %q", out)
	}
	checkNewMachine(t, e, "w2")
	// Other memory boots.
	if _, errOut, code := e.run("create", "--memory", "320", "w4"); code != 0 || strings.Contains(e.inspect("w4").AccelReason, "restored") {
		t.Fatalf("create with other memory: exit %d: %s", code, errOut)
	}
	e.must("rm", "-f", "w1", "w2", "w3", "w4")
}

// checkNewMachine checks that a restored VM took its own name as its
// hostname and the host's clock (to the second `date` shows, plus the
// exec's own time).
func checkNewMachine(t *testing.T, e *env, name string) {
	t.Helper()
	if out := e.must("exec", name, "--", "hostname"); strings.TrimSpace(out) != name {
		t.Fatalf("%s: hostname %q", name, out)
	}
	out := e.must("exec", name, "--", "date", "+%s")
	guest, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("%s: date %q", name, out)
	}
	if d := time.Now().Unix() - guest; d < -1 || d > 2 {
		t.Errorf("%s: the guest clock is %d s off the host's", name, d)
	}
}
