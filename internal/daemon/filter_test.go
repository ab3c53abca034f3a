package daemon

import (
	"context"
	"errors"
	"github.com/emberhq/ember/internal/client"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/ipam"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// fakeFilter is the bridge's guest filter at the daemon's seam: the
// leases a real bridge table would let send, by TAP.
type fakeFilter struct {
	mu        sync.Mutex
	allowed   map[string]store.Lease
	failAllow error // when set, allow fails
}

// fakeNetSetup is the host side with nothing done but the filter, which
// starts, as the real table does, with the leases the store holds.
func fakeNetSetup(setups *int) hostNetSetup {
	return func(ctx context.Context, cfg layout.Config, sub *ipam.Subnet, leases []store.Lease) (guestFilter, error) {
		*setups++
		f := &fakeFilter{allowed: map[string]store.Lease{}}
		for _, l := range leases {
			f.allowed[l.TAP] = l
		}
		return f, nil
	}
}

func (f *fakeFilter) allow(l store.Lease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failAllow != nil {
		return f.failAllow
	}
	if old, ok := f.allowed[l.TAP]; ok && old.IP != l.IP {
		return errors.New("tap " + l.TAP + " already allowed as " + old.IP)
	}
	f.allowed[l.TAP] = l
	return nil
}

func (f *fakeFilter) setFail(err error) {
	f.mu.Lock()
	f.failAllow = err
	f.mu.Unlock()
}

func (f *fakeFilter) revoke(l store.Lease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.allowed, l.TAP)
	return nil
}

func (f *fakeFilter) sync(ls []store.Lease) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.allowed = map[string]store.Lease{}
	for _, l := range ls {
		f.allowed[l.TAP] = l
	}
	return nil
}

// entries lists "TAP MAC IP" for each allowed lease, sorted.
func (f *fakeFilter) entries() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, l := range f.allowed {
		out = append(out, l.TAP+" "+l.MAC+" "+l.IP)
	}
	sort.Strings(out)
	return out
}

func filterOf(td *testDaemon) *fakeFilter { return td.nets.tap.filter.(*fakeFilter) }

// It asks through c, the client of the one Serve the test runs: a second
// Serve on the same daemon replaces the socket under the first one's
// client (seen flaking: "no socket" between the new Serve's remove and
// listen).
func vmEntries(t *testing.T, c *client.Client, names ...string) []string {
	t.Helper()
	var out []string
	for _, n := range names {
		var vm wire.VM
		if err := c.Call(context.Background(), wire.VMInspect.Name, wire.RefParams{Ref: n}, &vm); err != nil {
			t.Fatal(err)
		}
		out = append(out, vm.TAP+" "+vm.MAC+" "+vm.IP)
	}
	sort.Strings(out)
	return out
}

func sameEntries(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// Each VM's lease is on the bridge's filter while the VM exists, exactly
// as leased, and off it when the VM goes; a restart leaves exactly the
// remaining VMs' leases, also when reattach removes a half-made VM.
func TestTapLeaseFilterFollowsLeases(t *testing.T) {
	drv, taps, home := newFakeDriver(), newFakeTaps(), t.TempDir()
	td := openTapDaemon(t, home, "10.81.0.0/24", drv, taps)
	c := serve(t, td)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		if op, err := createAndWait(t, c, wire.CreateVMParams{Name: n}); err != nil || op.State != wire.OpSucceeded {
			t.Fatalf("create %s: %v %+v", n, err, op)
		}
	}
	if got, want := filterOf(td).entries(), vmEntries(t, c, "a", "b", "c"); !sameEntries(got, want) {
		t.Fatalf("filter %v, leases %v", got, want)
	}
	if err := c.Call(ctx, wire.VMDelete.Name, wire.RefParams{Ref: "a", Force: true}, nil); err != nil {
		t.Fatal(err)
	}
	bc := vmEntries(t, c, "b", "c")
	if got := filterOf(td).entries(); !sameEntries(got, bc) {
		t.Fatalf("after rm a: filter %v, want %v", got, bc)
	}
	td.Close()

	// A create the daemon died in: its row and lease are in the store.
	st, err := store.Open(ctx, td.layout.Store())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	ghost := store.VM{ID: "ghost0123456789", Name: "ghost", State: wire.StateCreating, Image: "tiny", CPUs: 1, MemoryMiB: 256,
		NetMode: "tap", CreatedAt: now, UpdatedAt: now}
	if err := st.InsertVM(ctx, ghost); err != nil {
		t.Fatal(err)
	}
	if err := st.InsertLease(ctx, store.Lease{IP: "10.81.0.200", VMID: ghost.ID, MAC: "52:54:0a:51:00:c8", TAP: "ftap99"}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	td2 := openTapDaemon(t, home, "10.81.0.0/24", drv, taps)
	if got := filterOf(td2).entries(); !sameEntries(got, bc) {
		t.Fatalf("after restart: filter %v, want only b and c %v", got, bc)
	}
	var vms []wire.VM
	if err := serve(t, td2).Call(ctx, wire.VMList.Name, nil, &vms); err != nil || len(vms) != 2 {
		t.Fatalf("ls after restart: %v %+v", err, vms)
	}
}

// A lease that cannot go on the filter fails the create with the reason
// and leaves no row, lease or TAP; the daemon answers and the next create
// works.
func TestTapFilterFailureFailsCreate(t *testing.T) {
	taps := newFakeTaps()
	td := openTapDaemon(t, "", "10.82.0.0/24", newFakeDriver(), taps)
	c := serve(t, td)
	filterOf(td).setFail(errors.New("nftables said no"))
	_, err := createAndWait(t, c, wire.CreateVMParams{Name: "x"})
	if err == nil || !strings.Contains(err.Error(), "let x onto the bridge: nftables said no") {
		t.Fatalf("create: %v", err)
	}
	nothingHeld(t, td, taps)
	if n := len(filterOf(td).entries()); n != 0 {
		t.Fatalf("%d filter entries left", n)
	}
	filterOf(td).setFail(nil)
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "x"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("next create: %v %+v", err, op)
	}
	if got, want := filterOf(td).entries(), vmEntries(t, c, "x"); !sameEntries(got, want) {
		t.Fatalf("filter %v, want %v", got, want)
	}
}

// The policy the config asks for: defaults, and the keys.
func TestTapPolicyFromConfig(t *testing.T) {
	sub := ipam.MustParse("10.231.0.0/24")
	pol, err := tapPolicy(layout.DefaultConfig(), sub)
	if err != nil {
		t.Fatal(err)
	}
	s := pol.Summary()
	for _, want := range []string{"guest-to-guest off", "host reachable only at 10.231.0.1 udp/53,tcp/53",
		"egress NAT except 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10 169.254.0.0/16"} {
		if !strings.Contains(s, want) {
			t.Errorf("default policy %q lacks %q", s, want)
		}
	}
	if pol.Table != "ember" || pol.Bridge != "ember0" || pol.TAPPrefix != "embtap" || pol.GuestToGuest {
		t.Errorf("policy %+v", pol)
	}
	cfg := layout.DefaultConfig()
	cfg.GuestToGuest = true
	cfg.EgressDeny = []string{"0.0.0.0/0"}
	cfg.EgressAllow = []string{"192.168.1.10"}
	if pol, err = tapPolicy(cfg, sub); err != nil {
		t.Fatal(err)
	}
	if s := pol.Summary(); !strings.Contains(s, "guest-to-guest allowed") || !strings.HasSuffix(s, "egress NAT except 0.0.0.0/0, allowed 192.168.1.10/32") {
		t.Errorf("configured policy %q", s)
	}
	cfg.EgressAllow = []string{"nope"}
	if _, err := tapPolicy(cfg, sub); err == nil || !strings.Contains(err.Error(), "`egress_allow`") {
		t.Errorf("bad allow list: %v", err)
	}
}
