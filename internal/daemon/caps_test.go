package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// recCap records every hook it runs (and every undo) in a shared log;
// failAt names a hook that fails.
type recCap struct {
	name   string
	failAt string
	mu     *sync.Mutex
	log    *[]string
}

func (c *recCap) note(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*c.log = append(*c.log, c.name+":"+s)
}

func (c *recCap) capName() string { return c.name }

func (c *recCap) check(args []string) error {
	for _, a := range args {
		if a == "bad" {
			return errors.New("bad is refused")
		}
	}
	return nil
}

func (c *recCap) hook(hook string, args []string) (func(), error) {
	c.note(hook + " " + strings.Join(args, ","))
	if c.failAt == hook {
		return nil, errors.New("boom")
	}
	return func() { c.note("undo " + hook) }, nil
}

func (c *recCap) beforeBoot(_ context.Context, _ store.VM, args []string, b *capBoot) (func(), error) {
	b.KernelArgs = append(b.KernelArgs, "rec."+c.name+"=1")
	return c.hook(hookBeforeBoot, args)
}

func (c *recCap) guestReady(_ context.Context, _ store.VM, args []string) (func(), error) {
	return c.hook(hookGuestReady, args)
}

func (c *recCap) beforeStop(store.VM)   { c.note("before stop") }
func (c *recCap) beforeDelete(store.VM) { c.note("before delete") }

// recCaps adds recording capabilities a and b (b failing at failB) to
// td's registry and returns their shared log.
func recCaps(td *testDaemon, failB string) func() []string {
	var mu sync.Mutex
	var log []string
	td.vms.caps.add(&recCap{name: "a", mu: &mu, log: &log})
	td.vms.caps.add(&recCap{name: "b", failAt: failB, mu: &mu, log: &log})
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := append([]string(nil), log...)
		log = nil
		return out
	}
}

// The hooks run in registry order at each point of a VM's life, each once
// with all its arguments; the kernel arguments a hook adds reach the boot.
func TestCapHooksOrder(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ctx := context.Background()
	log := recCaps(td, "")
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{"b=2", "a=1", "a"}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	want := []string{"a:before boot 1,", "b:before boot 2", "a:guest ready 1,", "b:guest ready 2"}
	if got := log(); !reflect.DeepEqual(got, want) {
		t.Fatalf("create hooks:\n got %q\nwant %q", got, want)
	}
	vm, _ := td.store.GetVMByName(ctx, "vm1")
	if cmd := specOf(vm).Cmdline; !strings.Contains(cmd, " rec.a=1 rec.b=1") {
		t.Errorf("kernel args of the hooks missing: %q", cmd)
	}
	var w wire.VM
	if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: "vm1"}, &w); err != nil || !reflect.DeepEqual(w.Caps, []string{"b=2", "a=1", "a"}) {
		t.Fatalf("inspect caps: %v %q", err, w.Caps)
	}
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if got := log(); !reflect.DeepEqual(got, []string{"b:before stop", "a:before stop"}) {
		t.Fatalf("stop hooks: %q", got)
	}
	if _, err := client.Do(ctx, c, wire.VMStart, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if got := log(); !reflect.DeepEqual(got, want) {
		t.Fatalf("start hooks:\n got %q\nwant %q", got, want)
	}
	if _, err := client.Do(ctx, c, wire.VMDelete, wire.RefParams{Ref: "vm1", Force: true}); err != nil {
		t.Fatal(err)
	}
	if got := log(); !reflect.DeepEqual(got, []string{"b:before stop", "a:before stop", "b:before delete", "a:before delete"}) {
		t.Fatalf("delete hooks: %q", got)
	}
}

// A failing hook fails the create naming the capability and the hook,
// undoes what the earlier hooks did (newest first) and leaves nothing; a
// failing start leaves the VM stopped with the reason.
func TestCapHookFailureUndoes(t *testing.T) {
	for _, hook := range []string{hookBeforeBoot, hookGuestReady} {
		t.Run(strings.ReplaceAll(hook, " ", "-"), func(t *testing.T) {
			drv := newFakeDriver()
			td := openTestDaemon(t, "", drv)
			c := serve(t, td)
			log := recCaps(td, hook)
			op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{"a=1", "b=2"}})
			if err != nil || op.State != wire.OpFailed || !strings.Contains(op.Error, "cap b: "+hook+": boom") {
				t.Fatalf("create: %v %+v", err, op)
			}
			var want []string
			if hook == hookBeforeBoot {
				want = []string{"a:before boot 1", "b:before boot 2", "a:undo before boot"}
			} else {
				want = []string{"a:before boot 1", "b:before boot 2", "a:guest ready 1", "b:guest ready 2",
					"a:undo guest ready", "b:undo before boot", "a:undo before boot"}
			}
			got := log()
			// The removal of the half-made VM runs the stop and delete hooks.
			if len(got) < len(want) || !reflect.DeepEqual(got[:len(want)], want) {
				t.Fatalf("hooks:\n got %q\nwant %q...", got, want)
			}
			assertNothingLeft(t, td)
		})
	}
}

// A capability argument is checked at the edge: a bad one, or an unknown
// capability, is invalid and names it; nothing is made.
func TestCapBadArgs(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	recCaps(td, "")
	for caps, want := range map[string]string{
		"nope":                  `unknown capability "nope"`,
		"a=bad":                 "cap a: bad is refused",
		"env=FOO":               `cap env: "FOO" is not KEY=VALUE`,
		"env==x":                "cap env: a variable needs a name",
		"port=8080":             "cap port:",
		"port=0.0.0.0:8080:80":  "not a loopback address",
		"port=10.0.0.1:8080:80": "not a loopback address",
		"port=8080:80/udp":      "only tcp",
		"port=70000:80":         "host port",
		"port=1:2,port=1:3":     "forwarded twice",
	} {
		var op wire.Operation
		err := c.Call(ctx, "vm.create", wire.CreateVMParams{Name: "vm1", Caps: strings.Split(caps, ",")}, &op)
		wantCode(t, err, wire.CodeInvalid)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("--cap %s: %v; want %q", caps, err, want)
		}
	}
	assertNothingLeft(t, td)
}

// env's variables sit above the image's and below the request's own.
func TestCapEnv(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	if err := td.store.PutImage(ctx, store.Image{Name: "app", Kind: store.ImageImported, Path: "/dev/null", Format: store.FormatRaw, SizeBytes: 4,
		Config: store.ImageConfig{Env: []string{"FOO=image", "IMG=1"}}}); err != nil {
		t.Fatal(err)
	}
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Image: "app", Caps: []string{"env=FOO=bar", "env=B=x=y", "env=C="}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	if got := showReq(t, c, wire.ExecParams{Ref: "vm1"}); got != "dir= user= env=B=x=y,C=,FOO=bar,IMG=1" {
		t.Errorf("exec: %q", got)
	}
	if got := showReq(t, c, wire.ExecParams{Ref: "vm1", Env: map[string]string{"FOO": "mine"}}); got != "dir= user= env=B=x=y,C=,FOO=mine,IMG=1" {
		t.Errorf("exec with its own -e: %q", got)
	}
}

// freeTestPort is a loopback port nothing listens on now.
func freeTestPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// roundTrip sends a line to 127.0.0.1:port and returns the answer.
func roundTrip(port int) (string, error) {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(conn, "hello\n"); err != nil {
		return "", err
	}
	return bufio.NewReader(conn).ReadString('\n')
}

// A port forward answers through the guest, closes at stop, listens
// again at start and after a daemon restart, and closes at delete.
func TestCapPortForward(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	ctx := context.Background()
	hp := freeTestPort(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{fmt.Sprintf("port=%d:8080", hp)}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	if got, err := roundTrip(hp); err != nil || got != "guest:8080 hello\n" {
		t.Fatalf("through the forward: %q %v", got, err)
	}
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(hp); err == nil {
		t.Fatal("the forward still answers after stop")
	}
	ports, err := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"})
	if err != nil || len(ports) != 1 || ports[0].Listening || ports[0].HostPort != hp || ports[0].GuestPort != 8080 {
		t.Fatalf("ls after stop: %v %+v", err, ports)
	}
	if _, err := client.Do(ctx, c, wire.VMStart, wire.RefParams{Ref: "vm1"}); err != nil {
		t.Fatal(err)
	}
	if got, err := roundTrip(hp); err != nil || got != "guest:8080 hello\n" {
		t.Fatalf("after start: %q %v", got, err)
	}

	td.Close()
	if _, err := roundTrip(hp); err == nil {
		t.Fatal("the forward outlives its daemon")
	}
	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	if got, err := roundTrip(hp); err != nil || got != "guest:8080 hello\n" {
		t.Fatalf("after a daemon restart: %q %v", got, err)
	}
	if _, err := client.Do(ctx, c2, wire.VMDelete, wire.RefParams{Ref: "vm1", Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(hp); err == nil {
		t.Fatal("the forward answers after delete")
	}
}

// After a daemon restart, a host port taken while no daemon watched costs
// only its own forward: the VM's other forwards listen again, and the
// capabilities registered after port (hostport) still act.
func TestCapPortReattachKeepsTheRest(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	ctx := context.Background()
	taken, kept, hsp := freeTestPort(t), freeTestPort(t), hostServer(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{
		fmt.Sprintf("port=%d:8080", taken), fmt.Sprintf("port=%d:8081", kept), fmt.Sprintf("hostport=%d:5000", hsp)}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	td.Close()
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(taken)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	if got, err := roundTrip(kept); err != nil || got != "guest:8081 hello\n" {
		t.Fatalf("the forward whose port is free, after a daemon restart: %q %v", got, err)
	}
	eventuallyFromGuest(t, drv, 5000, "host hello\n")
	ports, err := client.Do(ctx, c2, wire.PortList, wire.RefParams{Ref: "vm1"})
	if err != nil || len(ports) != 3 {
		t.Fatalf("port ls: %v %+v", err, ports)
	}
	for _, p := range ports {
		if want := p.HostPort != taken; p.Listening != want {
			t.Errorf("port ls: %+v: listening %v, want %v", p, p.Listening, want)
		}
	}
	vm, err := td2.store.GetVMByName(ctx, "vm1")
	if err != nil || vm.State != wire.StateRunning {
		t.Fatalf("vm after re-attach: %v %+v", err, vm.State)
	}
	// The failure is told: an event and the VM's last error name the port.
	if want := strconv.Itoa(taken); !strings.Contains(vm.LastError, want) || !strings.Contains(vm.LastError, "after a daemon restart") {
		t.Errorf("last error after re-attach: %q, want it to name port %s", vm.LastError, want)
	}
	evs := openEvents(t, c2, wire.EventsParams{SinceSeconds: 3600})
	for {
		e := evs.next()
		if e.Type == wire.EventVMWarning {
			if e.Subject != "vm1" || !strings.Contains(e.Detail, strconv.Itoa(taken)) {
				t.Errorf("warning event: %+v", e)
			}
			break
		}
	}
}

// A host port in use fails the create naming the capability and leaves
// nothing; the port's owner keeps it.
func TestCapPortInUseFailsCreate(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	hp := taken.Addr().(*net.TCPAddr).Port
	free := freeTestPort(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{fmt.Sprintf("port=%d:80", free), fmt.Sprintf("port=127.0.0.1:%d:81", hp)}})
	if err != nil || op.State != wire.OpFailed || !strings.Contains(op.Error, "cap port: before boot") || !strings.Contains(op.Error, strconv.Itoa(hp)) || op.ErrorCode != wire.CodeConflict {
		t.Fatalf("create: %v %+v", err, op)
	}
	drv.mu.Lock()
	started := drv.started
	drv.mu.Unlock()
	if started != 0 {
		t.Errorf("%d processes started for a create that could not listen", started)
	}
	assertNothingLeft(t, td)
	// The first forward, bound before the second failed, was closed.
	if ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(free))); err != nil {
		t.Errorf("port %d still held: %v", free, err)
	} else {
		ln.Close()
	}
}

// port add|rm|ls on a running VM: add listens at once and is kept; a port
// in use or given twice is refused and changes nothing; rm closes it.
func TestPortAddRemove(t *testing.T) {
	drv := newFakeDriver()
	home := t.TempDir()
	td := openTestDaemon(t, home, drv)
	c := serve(t, td)
	ctx := context.Background()
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	hp := freeTestPort(t)
	spec := fmt.Sprintf("localhost:%d:9000/tcp", hp)
	p, err := client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: spec})
	if err != nil || !p.Listening || p.HostAddr != "127.0.0.1" || p.GuestPort != 9000 {
		t.Fatalf("add: %v %+v", err, p)
	}
	if got, err := roundTrip(hp); err != nil || got != "guest:9000 hello\n" {
		t.Fatalf("through the added forward: %q %v", got, err)
	}
	_, err = client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: fmt.Sprintf("%d:9001", hp)})
	wantCode(t, err, wire.CodeInvalid)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: fmt.Sprintf("%d:1", taken.Addr().(*net.TCPAddr).Port)})
	wantCode(t, err, wire.CodeConflict)
	_, err = client.Do(ctx, c, wire.PortAdd, wire.PortParams{Ref: "vm1", Spec: "0.0.0.0:1:1"})
	wantCode(t, err, wire.CodeInvalid)
	ports, err := client.Do(ctx, c, wire.PortList, wire.RefParams{Ref: "vm1"})
	if err != nil || len(ports) != 1 || !ports[0].Listening {
		t.Fatalf("ls: %v %+v", err, ports)
	}

	// Kept across a daemon restart.
	td.Close()
	td2 := openTestDaemon(t, home, drv)
	c2 := serve(t, td2)
	if got, err := roundTrip(hp); err != nil || got != "guest:9000 hello\n" {
		t.Fatalf("after a daemon restart: %q %v", got, err)
	}
	_, err = client.Do(ctx, c2, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: strconv.Itoa(hp + 1)})
	wantCode(t, err, wire.CodeNotFound)
	if _, err := client.Do(ctx, c2, wire.PortRemove, wire.PortParams{Ref: "vm1", Spec: strconv.Itoa(hp)}); err != nil {
		t.Fatal(err)
	}
	if _, err := roundTrip(hp); err == nil {
		t.Fatal("the forward answers after rm")
	}
	if ports, err := client.Do(ctx, c2, wire.PortList, wire.RefParams{Ref: "vm1"}); err != nil || len(ports) != 0 {
		t.Fatalf("ls after rm: %v %+v", err, ports)
	}
	if vm, _ := td2.store.GetVMByName(ctx, "vm1"); len(vm.Caps) != 0 {
		t.Fatalf("caps after rm: %+v", vm.Caps)
	}
}

// A guest port where nothing listens closes the host connection; the
// forward goes on serving.
func TestCapPortGuestRefuses(t *testing.T) {
	drv := newFakeDriver()
	drv.closedPorts = map[int]bool{7: true}
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	hp, hp2 := freeTestPort(t), freeTestPort(t)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{fmt.Sprintf("port=%d:7", hp), fmt.Sprintf("port=%d:8", hp2)}}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	if got, err := roundTrip(hp); err == nil {
		t.Fatalf("a refused guest port answered %q", got)
	}
	if got, err := roundTrip(hp2); err != nil || got != "guest:8 hello\n" {
		t.Fatalf("the other forward: %q %v", got, err)
	}
}

// A guest that reset itself is booted again with its capabilities: the
// stop hooks run for the ended boot, the boot hooks for the new one, and
// the port forward answers from the new process.
func TestCapsAfterGuestReset(t *testing.T) {
	drv := newFakeDriver()
	td := openTestDaemon(t, "", drv)
	c := serve(t, td)
	ctx := context.Background()
	log := recCaps(td, "")
	hp := freeTestPort(t)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Caps: []string{"a=1", fmt.Sprintf("port=%d:80", hp)}})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	log()
	vm, err := td.store.GetVMByName(ctx, "vm1")
	if err != nil {
		t.Fatal(err)
	}
	inst := hypervisor.Instance{PID: vm.PID, StartTime: vm.PIDStart}
	drv.mu.Lock()
	delete(drv.alive, vm.PID) // the guest reset; QEMU ended
	drv.mu.Unlock()
	td.vms.guestReset(vm, inst)
	again, err := td.store.GetVM(ctx, vm.ID)
	if err != nil || again.State != wire.StateRunning || again.PID == vm.PID {
		t.Fatalf("after the reset: %v %+v", err, again)
	}
	want := []string{"b:before stop", "a:before stop", "a:before boot 1", "a:guest ready 1"}
	if got := log(); !reflect.DeepEqual(got, want) {
		t.Fatalf("hooks:\n got %q\nwant %q", got, want)
	}
	if got, err := roundTrip(hp); err != nil || got != "guest:80 hello\n" {
		t.Fatalf("the forward after the reset: %q %v", got, err)
	}
}
