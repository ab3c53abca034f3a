package daemon

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/wire"
)

// A KVM boot that prints nothing falls back to TCG in the same create: the
// VM runs, says tcg and why, the silent process is gone, and later creates
// do not try KVM again.
func TestKVMStallFallsBackToTCG(t *testing.T) {
	drv := newFakeDriver()
	drv.probeAnswer, drv.kvmSilent = hypervisor.AccelKVM, true
	td := openTestDaemon(t, "", drv)
	td.vms.kvmStall = 100 * time.Millisecond
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	var vm wire.VM
	if err := c.Call(context.Background(), "vm.inspect", wire.RefParams{Ref: "v1"}, &vm); err != nil {
		t.Fatal(err)
	}
	wantReason := "the KVM boot of vm v1 printed nothing on the console in 100ms; using TCG until the daemon restarts"
	if vm.Accel != "tcg" || vm.AccelReason != wantReason {
		t.Errorf("accel %q (%q), want tcg (%q)", vm.Accel, vm.AccelReason, wantReason)
	}
	if n := drv.running(); n != 1 {
		t.Errorf("%d processes run, want 1 (the silent KVM one quit)", n)
	}
	if _, err := createAndWait(t, c, wire.CreateVMParams{Name: "v2"}); err != nil {
		t.Fatal(err)
	}
	drv.mu.Lock()
	accels, probes := strings.Join(drv.accels, ","), drv.probes
	drv.mu.Unlock()
	if accels != "kvm,tcg,tcg" || probes != 1 {
		t.Errorf("starts %s with %d probes, want kvm,tcg,tcg with 1", accels, probes)
	}
	if info, err := client.Do(context.Background(), c, wire.DaemonInfoMethod, wire.None{}); err != nil || info.Accel != "tcg" || info.Reason != wantReason {
		t.Errorf("daemon.info: %v %+v", err, info)
	}
}

// With accel = "kvm" forced, a silent KVM boot fails at once with the
// reason, and the failed create leaves nothing.
func TestKVMForcedStallFails(t *testing.T) {
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte("accel = \"kvm\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	drv := newFakeDriver()
	drv.kvmSilent = true
	td := openTestDaemon(t, home, drv)
	td.vms.kvmStall = 100 * time.Millisecond
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	want := `vm v1 did not boot: its KVM boot printed nothing on the console in 100ms: KVM does not run this guest here (nested virtualisation incomplete?); accel = "kvm" is forced in ` +
		filepath.Join(home, "config.toml") + `: set it to "auto" or "tcg"`
	if op.State != wire.OpFailed || !strings.Contains(op.Error, want) {
		t.Fatalf("op %s: %q\nwant %q", op.State, op.Error, want)
	}
	assertNothingLeft(t, td)
	if drv.probes != 0 {
		t.Errorf("forced kvm probed %d times", drv.probes)
	}
	if info, err := client.Do(context.Background(), c, wire.DaemonInfoMethod, wire.None{}); err != nil || info.Accel != "kvm" || !info.AccelForced {
		t.Errorf("daemon.info: %v %+v", err, info)
	}
}

// Concurrent boots of one kernel share one probe, and no lock is held while
// it runs: another kernel's probe proceeds meanwhile.
func TestAccelCacheOneProbePerKernel(t *testing.T) {
	var a accelCache
	var mu sync.Mutex
	calls := map[string]int{}
	release := make(chan struct{})
	probe := func(key string) func(context.Context) accelDecision {
		return func(ctx context.Context) accelDecision {
			mu.Lock()
			calls[key]++
			mu.Unlock()
			if key == "slow" {
				<-release
			}
			return accelDecision{Accel: "kvm", Reason: key}
		}
	}
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if d := a.resolve(context.Background(), "slow", probe("slow")); d.Reason != "slow" {
				t.Errorf("got %+v", d)
			}
		}()
	}
	// The other kernel is not held up by the slow probe.
	if d := a.resolve(context.Background(), "fast", probe("fast")); d.Reason != "fast" {
		t.Errorf("got %+v", d)
	}
	close(release)
	wg.Wait()
	if calls["slow"] != 1 || calls["fast"] != 1 {
		t.Errorf("probe calls %v, want one per kernel", calls)
	}
}

// An interrupted probe answered nothing: it is not cached.
func TestAccelCacheInterruptedProbeNotCached(t *testing.T) {
	var a accelCache
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	n := 0
	probe := func(ctx context.Context) accelDecision {
		n++
		return accelDecision{Accel: "tcg", Reason: "interrupted"}
	}
	a.resolve(ctx, "k", probe)
	if d := a.resolve(context.Background(), "k", func(context.Context) accelDecision {
		n++
		return accelDecision{Accel: "kvm", Reason: "ran"}
	}); d.Accel != "kvm" || n != 2 {
		t.Errorf("got %+v after %d probes", d, n)
	}
}
