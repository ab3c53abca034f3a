package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/wire"
)

// A VM with a file written and a session running is snapshotted (and
// runs on); two VMs made from the snapshot have the file and the
// session's scrollback, the session takes input, and each is a machine
// of its own: its own hostname, host key and random bytes, its clock
// the host's. A create asking other memory boots the snapshot's disk
// instead and says why; a snapshot in use cannot be removed.
func TestSnapshotRestoreRealVM(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"web_port = 0\n", nil) // /metrics (agentConns)
	e.must("create", "orig")
	checkTickless(t, e, "orig")
	e.must("exec", "orig", "--", "sh", "-c", "echo kept-data > /root/file && sync")
	e.must("session", "new", "orig", "s1")
	// session run waits for the command's end (a wait after a send could
	// start after the output came).
	if out := e.must("session", "run", "orig", "s1", "--timeout", "60s", "--", "echo", "before-snapshot-marker"); !strings.Contains(out, "before-snapshot-marker") {
		t.Fatalf("session run in orig: %q", out)
	}

	e.must("snapshot", "create", "orig", "snap1")
	// orig stood still while its state was saved: its clock was set
	// again when it ran on.
	checkGuestClock(t, e, "orig", "the source vm after snapshot create")
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
		before := agentConns(t, e)
		start := time.Now()
		e.must("create", "--snapshot", "snap1", name)
		t.Logf("create --snapshot %s: %v", name, time.Since(start).Round(time.Millisecond))
		if log := createLog(t, e, name); !strings.Contains(log, "restoring snapshot snap1, not booting") {
			t.Fatalf("%s: the create's log %q does not say it restored", name, log)
		}
		rand[name] = e.must("exec", name, "--", "sh", "-c", "head -c 16 /dev/urandom | od -x")
		// The create made one connection, to the restored agent, and
		// the first exec went over it: no second handshake.
		if after := agentConns(t, e); after["restore"] != before["restore"]+1 || after["redial"] != before["redial"] {
			t.Fatalf("%s: agent connections before the create %v, after its first exec %v: want one restore and no redial", name, before, after)
		}
		if out := e.must("exec", name, "--", "cat", "/root/file"); strings.TrimSpace(out) != "kept-data" {
			t.Fatalf("%s: the file: %q", name, out)
		}
		checkNewMachine(t, e, name)
		checkTickless(t, e, name) // restored with the saved CPU model
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
	if !strings.Contains(errOut, "warning: snapshot snap1 is not restored: 320 MiB of memory asked") {
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

// The must-work line of issue 14: a snapshot made under another memory
// size, or whose image was deleted since (its own kernel with it), is not
// restored; the create says why on the user's terminal, in one warning
// line, and in its operation's log, and cold-boots the snapshot's disk
// (the default kernel when the image's own went), and the VM answers
// exec. snapshot ls shows the image as deleted; a user snapshot outlives
// its image.
func TestSnapshotNotRestorableColdBootsRealVM(t *testing.T) {
	e := newEnv(t)
	e.must("create", "t1")
	tinyImg := e.imageOf("tiny")
	defaultKernel := e.inspect("t1").Kernel
	mem := e.inspect("t1").MemoryMiB
	// Written just before the snapshot and not synced: the snapshot asks
	// the guest to sync, so the saved disk a cold boot uses has it (it
	// read back as zeros before).
	e.must("exec", "t1", "--", "sh", "-c", "echo unsynced-42 > /root/unsynced")
	e.must("snapshot", "create", "t1", "smem")
	e.must("rm", "-f", "t1")

	// Another memory size.
	_, errOut, code := e.run("create", "--snapshot", "smem", "--memory", strconv.Itoa(mem+64), "m1")
	want := fmt.Sprintf("warning: snapshot smem is not restored: %d MiB of memory asked, the snapshot has %d MiB; cold-booting its saved disk\n", mem+64, mem)
	if code != 0 || !strings.Contains(errOut, want) {
		t.Fatalf("create --snapshot with other memory: exit %d, stderr %q, want the line %q", code, errOut, want)
	}
	checkColdBooted(t, e, "m1", "smem")
	if got := e.guestFile("m1", "/root/unsynced"); got != "unsynced-42\n" {
		t.Fatalf("a file written just before the snapshot reads %q in the cold-booted copy", got)
	}
	e.must("rm", "-f", "m1")

	// An image with its own kernel, snapshotted, then deleted.
	release, err := kernel.ReleaseFromBzImage(filepath.Join(kernelDir, "vmlinuz"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	e.must("image", "register", "own", "--rootfs", rootfsWithKernelModules(t, tinyImg.Path, dir, release), "--kernel", kernelFile(t, dir))
	e.must("create", "--image", "own", "o1")
	e.must("exec", "o1", "--", "sh", "-c", "echo from-own > /root/file && sync")
	e.must("snapshot", "create", "o1", "sown")
	e.must("rm", "-f", "o1")
	e.must("image", "rm", "own")
	if out := e.must("snapshot", "ls"); !strings.Contains(out, "own (deleted)") {
		t.Fatalf("snapshot ls after image rm:\n%s", out)
	}
	_, errOut, code = e.run("create", "--snapshot", "sown", "o2")
	want = "warning: snapshot sown is not restored: its image own was deleted; its kernel own.kernel was deleted (the default kernel boots); cold-booting its saved disk\n"
	if code != 0 || !strings.Contains(errOut, want) {
		t.Fatalf("create --snapshot of a deleted image: exit %d, stderr %q, want the line %q", code, errOut, want)
	}
	checkColdBooted(t, e, "o2", "sown")
	if vm := e.inspect("o2"); vm.Kernel != defaultKernel || vm.Image != "own" {
		t.Fatalf("o2 boots kernel %q of image %q, want the default %q", vm.Kernel, vm.Image, defaultKernel)
	}
	if out := e.must("exec", "o2", "--", "cat", "/root/file"); strings.TrimSpace(out) != "from-own" {
		t.Fatalf("o2: the snapshot's file: %q", out)
	}
	// Its next start boots its own disk: the image is not needed.
	e.must("restart", "o2")
	if out := e.must("exec", "o2", "--", "cat", "/root/file"); strings.TrimSpace(out) != "from-own" {
		t.Fatalf("o2 after restart: %q", out)
	}
	e.must("rm", "-f", "o2")
	e.must("snapshot", "rm", "smem", "sown")
	// An unknown name: the same exit status as the other rm commands.
	_, vmErr, vmCode := e.run("rm", "nope")
	_, errOut, code = e.run("snapshot", "rm", "nope")
	if code != 3 || code != vmCode || !strings.Contains(errOut, `no snapshot named "nope"`) {
		t.Fatalf("snapshot rm nope: exit %d %q (rm nope: exit %d %q)", code, errOut, vmCode, vmErr)
	}
}

// createLog is the log of vm's create operation, one line a line.
func createLog(t *testing.T, e *env, vm string) string {
	t.Helper()
	var ops []wire.Operation
	if err := json.Unmarshal([]byte(e.must("op", "ls", "--json")), &ops); err != nil {
		t.Fatal(err)
	}
	var id string
	for _, op := range ops {
		if op.Kind == wire.VMCreate.Name && op.Target == vm {
			id = op.ID
		}
	}
	return strings.Join(e.opOf(id).Log, "\n")
}

// checkColdBooted checks that vm was booted, not restored, from
// snapshot: its create operation's log says so, its record and console
// show a boot, and it answers exec.
func checkColdBooted(t *testing.T, e *env, vm, snapshot string) {
	t.Helper()
	if log := createLog(t, e, vm); !strings.Contains(log, "snapshot "+snapshot+" is not restored") || !strings.Contains(log, "cold-booting its saved disk") {
		t.Fatalf("%s: the create's log %q", vm, log)
	}
	if r := e.inspect(vm).AccelReason; strings.Contains(r, "restored") {
		t.Fatalf("%s was restored: %q", vm, r)
	}
	if logs := e.must("logs", vm); !strings.Contains(logs, "ember-agent: start") {
		t.Fatalf("%s did not boot:\n%s", vm, logs)
	}
	if out := e.must("exec", vm, "--", "hostname"); strings.TrimSpace(out) != vm {
		t.Fatalf("%s: hostname %q", vm, out)
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
		if log := createLog(t, e, name); !strings.Contains(log, "restoring the warm snapshot of image") {
			t.Fatalf("%s: the create's log %q does not say it restored", name, log)
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
	// --all lists it, with the disk space its memory and disk take.
	var all []wire.Snapshot
	if out := e.must("snapshot", "ls", "--all", "--json"); json.Unmarshal([]byte(out), &all) != nil ||
		len(all) != 1 || !strings.HasPrefix(all[0].Name, ".warm-") || all[0].Image != "tiny" || all[0].SizeBytes < 1<<20 {
		t.Fatalf("snapshot ls --all --json:\n%s", out)
	}
	checkWarmOverlay(t, e, all[0])
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
	// A cold boot's clock is the RTC's, to the second, until the daemon
	// sets it as the agent answers.
	if out := e.must("exec", "w2", "--", "hostname"); strings.TrimSpace(out) != "w2" {
		t.Fatalf("w2 after restart: hostname %q", out)
	}
	checkGuestClock(t, e, "w2", "w2 after a restart (a cold boot)")
	// Other memory boots.
	if _, errOut, code := e.run("create", "--memory", "320", "w4"); code != 0 || strings.Contains(e.inspect("w4").AccelReason, "restored") {
		t.Fatalf("create with other memory: exit %d: %s", code, errOut)
	}
	// Two shapes, two warm snapshots; image rm takes them along (their
	// files too) once no VM's disk is made on them.
	if n := warmSnapshotFiles(t, e); n != 2 {
		t.Fatalf("%d warm snapshot folders, want 2 (256 and 320 MiB)", n)
	}
	// The image stays while a VM made on its warm snapshot (so on its
	// file) is there, forced or not.
	if _, errOut, code := e.run("image", "rm", "--force", "tiny"); code == 0 || !strings.Contains(errOut, "in use") {
		t.Fatalf("image rm --force of an image in use: exit %d: %s", code, errOut)
	}
	e.must("rm", "-f", "w1", "w2", "w3", "w4")
	e.must("image", "rm", "tiny")
	if n := warmSnapshotFiles(t, e); n != 0 {
		t.Fatalf("%d warm snapshot folders after image rm", n)
	}
	if !strings.Contains(e.log.String(), "warm snapshot removed") {
		t.Errorf("the daemon's log does not say it removed the warm snapshots")
	}
}

// A daemon started with warm images turned off prunes the warm
// snapshots, but not one a VM's disk is made on (until that VM goes) and
// never a user's snapshot.
func TestWarmSnapshotsPrunedAtStartRealVM(t *testing.T) {
	e := newEnvWith(t, e2eConfig+"warm_images = true\n", nil)
	e.must("create", "w1") // saves the warm snapshot
	e.must("snapshot", "create", "w1", "mine")
	e.must("create", "w2") // restores it: w2's disk is made on it
	if vm := e.inspect("w2"); !strings.Contains(vm.AccelReason, "restored from a snapshot") {
		t.Fatalf("w2 was not restored: %+v", vm)
	}
	e.must("rm", "-f", "w1")
	if n := warmSnapshotFiles(t, e); n != 2 {
		t.Fatalf("%d snapshot folders, want the warm one and mine", n)
	}
	restartWith := func(config, wantLog string) {
		t.Helper()
		e.stopDaemon(syscall.SIGTERM)
		if err := os.WriteFile(filepath.Join(e.home, "config.toml"), []byte(fmt.Sprintf("builtin_image_cache = %q\n", imageCache)+pinColdBoots(config)), 0o644); err != nil {
			t.Fatal(err)
		}
		e.startDaemon()
		deadline := time.Now().Add(60 * time.Second)
		for !strings.Contains(e.log.String(), wantLog) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the daemon's log:\n%s", wantLog, e.log.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	restartWith(e2eConfig, "warm snapshot kept")
	if n := warmSnapshotFiles(t, e); n != 2 {
		t.Fatalf("%d snapshot folders after a start with w2 on the warm one, want 2", n)
	}
	if out := e.must("exec", "w2", "--", "hostname"); strings.TrimSpace(out) != "w2" {
		t.Fatalf("w2 after the restart: %q", out)
	}
	e.must("rm", "-f", "w2")
	restartWith(e2eConfig, "warm snapshot removed")
	if n := warmSnapshotFiles(t, e); n != 1 {
		t.Fatalf("%d snapshot folders, want mine alone", n)
	}
	if out := e.must("snapshot", "ls"); !strings.Contains(out, "mine") {
		t.Fatalf("snapshot ls: %s", out)
	}
	e.must("snapshot", "rm", "mine")
}

// checkWarmOverlay checks that warm snapshot sn's disk is a qcow2
// backed by its image's file (path and format in its header), and takes
// far less of the host's disk than the image's file.
func checkWarmOverlay(t *testing.T, e *env, sn wire.Snapshot) {
	t.Helper()
	img := e.imageOf(sn.Image)
	disk := filepath.Join(e.home, "state", "snapshots", sn.ID, "disk.qcow2")
	d, err := qemu.New(qemu.Options{})
	if err != nil {
		t.Fatal(err)
	}
	info, err := d.Info(context.Background(), disk, "qcow2")
	if err != nil {
		t.Fatalf("warm snapshot disk: %v", err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(img.Path, &st); err != nil {
		t.Fatal(err)
	}
	imgUsed := st.Blocks * 512
	t.Logf("warm snapshot disk: %d bytes on the host (snapshot ls: %d with its memory); image %s: %d bytes (%d on the host)",
		info.ActualSize, sn.SizeBytes, img.Name, img.SizeBytes, imgUsed)
	if info.Format != "qcow2" || info.FullBackingFilename != img.Path || info.BackingFormat != img.Format {
		t.Fatalf("warm snapshot disk %s: %+v, want a qcow2 backed by %s (%s)", disk, info, img.Path, img.Format)
	}
	if info.ActualSize <= 0 || info.ActualSize*4 > imgUsed {
		t.Fatalf("warm snapshot disk takes %d bytes, the image %d: not much smaller", info.ActualSize, imgUsed)
	}
	if _, err := os.Stat(filepath.Join(e.home, "state", "snapshots", sn.ID, "disk.raw")); !os.IsNotExist(err) {
		t.Fatalf("a flattened copy beside the warm overlay: %v", err)
	}
}

// warmSnapshotFiles counts the snapshot folders in e's state (the warm
// ones where the test made no user snapshot).
func warmSnapshotFiles(t *testing.T, e *env) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.home, "state", "snapshots"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries)
}

// agentConns reads the daemon's ember_agent_connections_total by why
// from /metrics (the daemon's web listener, web_port = 0).
func agentConns(t *testing.T, e *env) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	const prefix = `ember_agent_connections_total{why="`
	for _, line := range scrapeMetrics(t, e) {
		line, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		why, val, ok := strings.Cut(line, `"} `)
		if n, err := strconv.ParseFloat(val, 64); ok && err == nil {
			out[why] = n
		}
	}
	if len(out) == 0 {
		t.Fatalf("/metrics: no ember_agent_connections_total")
	}
	return out
}

// scrapeMetrics is the daemon's /metrics (its web listener), line by
// line.
func scrapeMetrics(t *testing.T, e *env) []string {
	t.Helper()
	u, err := url.Parse(strings.TrimSpace(e.must("web")))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", "http://"+u.Host+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+u.Query().Get("token"))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}

// checkTickless checks that a TCG guest runs with ARAT and so tickless
// when idle: QEMU's -cpu is the driver's TCG model, the guest's CPU has
// the arat flag, and every CPU's tick is in NOHZ mode (/proc/timer_list
// nohz_mode 2, high resolution; 0 is the periodic 250 Hz tick a guest
// without ARAT keeps under microvm), with the lapic timer on hrtimers.
func checkTickless(t *testing.T, e *env, name string) {
	t.Helper()
	vm := e.inspect(name)
	if vm.Accel != "tcg" {
		t.Logf("%s runs under %s: its CPU is the host's, the tickless check is for TCG", name, vm.Accel)
		return
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", vm.PID))
	if err != nil {
		t.Fatalf("%s: qemu's command line: %v", name, err)
	}
	args := strings.Split(string(raw), "\x00")
	cpu := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-cpu" {
			cpu = args[i+1]
		}
	}
	if cpu != qemu.TCGCPUModel {
		t.Fatalf("%s: qemu's -cpu %q, want %q", name, cpu, qemu.TCGCPUModel)
	}
	if out := e.must("exec", name, "--", "cat", "/proc/cpuinfo"); !strings.Contains(out, " arat") {
		t.Fatalf("%s: the guest's CPU has no arat flag:\n%s", name, out)
	}
	out := e.must("exec", name, "--", "cat", "/proc/timer_list")
	modes := 0
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(k) != ".nohz_mode" {
			continue
		}
		modes++
		if strings.TrimSpace(v) != "2" {
			t.Fatalf("%s: a CPU's tick is not tickless (nohz_mode %s):\n%s", name, strings.TrimSpace(v), out)
		}
	}
	if modes == 0 || strings.Contains(out, "tick_handle_periodic") {
		t.Fatalf("%s: no NOHZ tick in /proc/timer_list (%d nohz_mode lines):\n%s", name, modes, out)
	}
}

// checkNewMachine checks that a restored VM took its own name as its
// hostname and the host's clock (within 1 s, checkGuestClock).
func checkNewMachine(t *testing.T, e *env, name string) {
	t.Helper()
	if out := e.must("exec", name, "--", "hostname"); strings.TrimSpace(out) != name {
		t.Fatalf("%s: hostname %q", name, out)
	}
	checkGuestClock(t, e, name, name+" restored")
}
