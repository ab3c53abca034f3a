package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/crypto/ssh"

	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// fakeTaps is the TAP pool at the daemon's seam: names only, no netlink.
type fakeTaps struct {
	mu         sync.Mutex
	next       int
	free       []string
	inUse      map[string]bool
	reconciled []string
	puts       int
}

func newFakeTaps() *fakeTaps { return &fakeTaps{inUse: map[string]bool{}} }

func (f *fakeTaps) Take() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n string
	if len(f.free) > 0 {
		n, f.free = f.free[0], f.free[1:]
	} else {
		n = fmt.Sprintf("ftap%d", f.next)
		f.next++
	}
	if f.inUse[n] {
		return "", fmt.Errorf("tap %s handed out twice", n)
	}
	f.inUse[n] = true
	return n, nil
}

func (f *fakeTaps) Put(n string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.inUse, n)
	f.free = append(f.free, n)
	f.puts++
}

func (f *fakeTaps) Reconcile(inUse []string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reconciled = append([]string(nil), inUse...)
	sort.Strings(f.reconciled)
	f.inUse = map[string]bool{}
	for _, n := range inUse {
		f.inUse[n] = true
	}
	return nil
}

func (f *fakeTaps) Close() {}

func (f *fakeTaps) used() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.inUse)
}

// openTapDaemon is openTestDaemon with tap networking on: the host side
// is a no-op, the TAP pool is fake and the VM DNS listens on loopback.
func openTapDaemon(t *testing.T, home, subnet string, drv *fakeDriver, taps *fakeTaps) *testDaemon {
	t.Helper()
	if home == "" {
		home = t.TempDir()
	}
	cfg := fmt.Sprintf("default_net = \"tap\"\nsubnet = %q\ndomain = \"vm.test\"\n", subnet)
	if err := os.WriteFile(filepath.Join(home, layout.ConfigFile), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	td := &testDaemon{drv: drv, home: home}
	var setups int
	d, err := Open(context.Background(), Options{
		Home: home, Driver: drv, Logger: discardLogger(),
		PrepareBoot: func(ctx context.Context, r bootRequest) (bootFiles, error) {
			if td.prepErr != nil {
				return bootFiles{}, td.prepErr
			}
			return bootFiles{KernelName: "k1", Vmlinuz: "/dev/null", Initrd: "/dev/null", Disk: "/dev/null", DiskFormat: "raw", DiskBytes: 1 << 30}, nil
		},
		WaitGuest: func(ctx context.Context, addr string, key ssh.Signer, pin guest.HostKeyPin, alive func() error) (guestConn, error) {
			// In tap mode the agent is dialled on the VM's own address.
			if host, port, err := net.SplitHostPort(addr); err != nil || port != "22" || !ipam.MustParse(subnet).Leasable(net.ParseIP(host)) {
				return nil, fmt.Errorf("agent dialled at %q, not a leased address port 22", addr)
			}
			if err := alive(); err != nil {
				return nil, err
			}
			return drv.dialAgent(addr, pin)
		},
		NetSetup: fakeNetSetup(&setups),
		Taps:     taps,
		DNSAddr:  "127.0.0.1:0",
	})
	if err != nil {
		t.Fatalf("open daemon: %v", err)
	}
	if setups != 1 {
		t.Fatalf("host network set up %d times", setups)
	}
	td.Daemon = d
	t.Cleanup(func() { d.Close() })
	return td
}

func lookupA(t *testing.T, td *testDaemon, name string) (string, int) {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeA)
	r, err := dns.Exchange(m, td.nets.tap.dnsAddr)
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	if len(r.Answer) == 1 {
		return r.Answer[0].(*dns.A).A.String(), r.Rcode
	}
	return "", r.Rcode
}

func TestTapConcurrentCreates(t *testing.T) {
	const n = 200
	taps := newFakeTaps()
	td := openTapDaemon(t, "", "10.77.0.0/22", newFakeDriver(), taps)
	c := serve(t, td)
	ctx := context.Background()

	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			var op wire.Operation
			if err := c.Call(ctx, "vm.create", wire.CreateVMParams{Name: fmt.Sprintf("vm%d", i)}, &op); err != nil {
				errs <- err
				return
			}
			if op := waitFor(t, c, op.ID); op.State != wire.OpSucceeded {
				errs <- fmt.Errorf("create vm%d: %s %s", i, op.State, op.Error)
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	var vms []wire.VM
	if err := c.Call(ctx, "vm.list", nil, &vms); err != nil {
		t.Fatal(err)
	}
	sub := ipam.MustParse("10.77.0.0/22")
	ips, macs, tapNames := map[string]string{}, map[string]bool{}, map[string]bool{}
	for _, vm := range vms {
		if !sub.Leasable(net.ParseIP(vm.IP)) {
			t.Fatalf("vm %s got %q, not a leasable address", vm.Name, vm.IP)
		}
		if other, dup := ips[vm.IP]; dup {
			t.Fatalf("%s and %s share %s", vm.Name, other, vm.IP)
		}
		ips[vm.IP], macs[vm.MAC], tapNames[vm.TAP] = vm.Name, true, true
		if vm.Net != "tap" || vm.DNSName != vm.Name+".vm.test" || vm.SSHPort != 0 {
			t.Fatalf("vm %+v", vm)
		}
	}
	if len(vms) != n || len(ips) != n || len(macs) != n || len(tapNames) != n {
		t.Fatalf("%d vms, %d addresses, %d macs, %d taps; want %d each", len(vms), len(ips), len(macs), len(tapNames), n)
	}
	leases, err := td.store.ListLeases(ctx)
	if err != nil || len(leases) != n {
		t.Fatalf("%d leases stored (%v), want %d", len(leases), err, n)
	}
	// Lowest-first allocation with no gaps: exactly .2 up to the 201st address.
	if _, ok := ips["10.77.0.2"]; !ok {
		t.Fatal("first address not leased")
	}
	if _, ok := ips["10.77.0.201"]; !ok {
		t.Fatal("a gap in the leased range")
	}
	for _, name := range []string{"vm0", "vm99", "vm199"} {
		var vm wire.VM
		if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: name}, &vm); err != nil {
			t.Fatal(err)
		}
		if ip, _ := lookupA(t, td, name+".vm.test"); ip != vm.IP {
			t.Fatalf("dns %s = %q, inspect %q", name, ip, vm.IP)
		}
	}

	// Delete all of them concurrently: every lease and TAP comes back.
	wg = sync.WaitGroup{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := c.Call(ctx, "vm.delete", wire.RefParams{Ref: fmt.Sprintf("vm%d", i), Force: true}, nil); err != nil {
				t.Error(err)
			}
		}(i)
	}
	wg.Wait()
	if leases, _ := td.store.ListLeases(ctx); len(leases) != 0 {
		t.Fatalf("%d leases left", len(leases))
	}
	if u := taps.used(); u != 0 {
		t.Fatalf("%d taps still in use", u)
	}
	if _, rc := lookupA(t, td, "vm7.vm.test"); rc != dns.RcodeNameError {
		t.Fatalf("deleted vm answers %s", dns.RcodeToString[rc])
	}
}

func TestTapLeasesSurviveRestart(t *testing.T) {
	drv, taps, home := newFakeDriver(), newFakeTaps(), t.TempDir()
	td := openTapDaemon(t, home, "10.78.0.0/29", drv, taps)
	c := serve(t, td)
	ctx := context.Background()
	want := map[string]wire.VM{}
	for _, name := range []string{"a", "b", "c"} {
		if op, err := createAndWait(t, c, wire.CreateVMParams{Name: name}); err != nil || op.State != wire.OpSucceeded {
			t.Fatalf("create %s: %v %+v", name, err, op)
		}
		var vm wire.VM
		if err := c.Call(ctx, "vm.inspect", wire.RefParams{Ref: name}, &vm); err != nil {
			t.Fatal(err)
		}
		want[name] = vm
	}
	td.Close()

	td2 := openTapDaemon(t, home, "10.78.0.0/29", drv, taps)
	c2 := serve(t, td2)
	if len(taps.reconciled) != 3 {
		t.Fatalf("pool reconciled with %v, want the 3 taps in use", taps.reconciled)
	}
	for name, w := range want {
		var vm wire.VM
		if err := c2.Call(ctx, "vm.inspect", wire.RefParams{Ref: name}, &vm); err != nil {
			t.Fatal(err)
		}
		if vm.IP != w.IP || vm.MAC != w.MAC || vm.TAP != w.TAP || vm.State != wire.StateRunning {
			t.Fatalf("%s after restart: %+v, before %+v", name, vm, w)
		}
		if ip, _ := lookupA(t, td2, name+".vm.test"); ip != w.IP {
			t.Fatalf("dns %s after restart = %q, want %s", name, ip, w.IP)
		}
	}
	// Delete b: NXDOMAIN at once, TAP back, address free for the next VM.
	puts := taps.puts
	if err := c2.Call(ctx, "vm.delete", wire.RefParams{Ref: "b", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	if _, rc := lookupA(t, td2, "b.vm.test"); rc != dns.RcodeNameError {
		t.Fatalf("deleted b answers %s", dns.RcodeToString[rc])
	}
	if taps.puts != puts+1 {
		t.Fatal("tap of b not given back")
	}
	if op, err := createAndWait(t, c2, wire.CreateVMParams{Name: "d"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create d: %v %+v", err, op)
	}
	var d wire.VM
	if err := c2.Call(ctx, "vm.inspect", wire.RefParams{Ref: "d"}, &d); err != nil || d.IP != want["b"].IP {
		t.Fatalf("d got %q, want b's freed %s (%v)", d.IP, want["b"].IP, err)
	}
	// A /29 has 5 addresses: a, c, d and two more; the sixth VM finds none.
	for _, name := range []string{"e", "f"} {
		if op, err := createAndWait(t, c2, wire.CreateVMParams{Name: name}); err != nil || op.State != wire.OpSucceeded {
			t.Fatalf("create %s: %v %+v", name, err, op)
		}
	}
	used := taps.used()
	_, err := createAndWait(t, c2, wire.CreateVMParams{Name: "g"})
	wantCode(t, err, wire.CodeConflict)
	if err == nil || !strings.Contains(err.Error(), "no free address") {
		t.Fatalf("exhausted subnet: %v", err)
	}
	if taps.used() != used {
		t.Fatal("failed create kept its tap")
	}
	if _, err := td2.store.GetVMByName(ctx, "g"); err == nil {
		t.Fatal("failed create left its row")
	}
}

func TestTapFailedCreateReleases(t *testing.T) {
	taps := newFakeTaps()
	td := openTapDaemon(t, "", "10.79.0.0/24", newFakeDriver(), taps)
	c := serve(t, td)
	td.prepErr = fmt.Errorf("no kernel today")
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "x"})
	if err != nil || op.State != wire.OpFailed {
		t.Fatalf("create: %v %+v", err, op)
	}
	if leases, _ := td.store.ListLeases(context.Background()); len(leases) != 0 {
		t.Fatalf("leases left: %+v", leases)
	}
	if taps.used() != 0 {
		t.Fatal("tap not given back")
	}
	if _, rc := lookupA(t, td, "x.vm.test"); rc != dns.RcodeNameError {
		t.Fatalf("failed vm still resolves: %s", dns.RcodeToString[rc])
	}
	assertNothingLeft(t, td)
	// An invalid name is refused at the edge, before a TAP is taken.
	_, err = createAndWait(t, c, wire.CreateVMParams{Name: "Not_A_Label"})
	wantCode(t, err, wire.CodeInvalid)
	if taps.used() != 0 || taps.next != 1 {
		t.Fatalf("invalid create touched the pool: %d used, %d made", taps.used(), taps.next)
	}
}

func TestTapOffRefused(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	_, err := createAndWait(t, c, wire.CreateVMParams{Name: "x", Net: "tap"})
	wantCode(t, err, wire.CodeInvalid)
	if !strings.Contains(err.Error(), "tap networking is off") {
		t.Fatalf("message: %v", err)
	}
	_, err = createAndWait(t, c, wire.CreateVMParams{Name: "x", Net: "bridge"})
	wantCode(t, err, wire.CodeInvalid)
}
