package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/hypervisor"
	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

// accelCheck says which accelerator VMs use and why: the running daemon's
// decision when one answers, else the answer of the same probe the daemon
// runs (the guest kernel booted under KVM for a moment), and whether the
// config forces it.
func accelCheck(ctx context.Context, lay layout.Layout, drv *qemu.Driver) Check {
	cfg, err := layout.LoadConfig(lay.Config)
	if err != nil {
		return fail("accel", err.Error(), "fix "+lay.Config)
	}
	if info, ok := daemonAccel(ctx, lay); ok && cfg.Accel == "auto" {
		return accelResult(info.Accel, "in use by the running daemon: "+info.Reason)
	}
	if cfg.Accel == hypervisor.AccelTCG {
		return Check{Name: "accel", Status: "pass",
			Detail: fmt.Sprintf("tcg: forced by accel = \"tcg\" in %s; KVM is not tried", lay.Config)}
	}
	probe, cleanup, why := doctorProbeSpec(ctx, lay, cfg.Kernel)
	defer cleanup()
	if probe == nil {
		if cfg.Accel == hypervisor.AccelKVM {
			return warn("accel", fmt.Sprintf("kvm: forced by accel = \"kvm\" in %s, not yet proven: %s", lay.Config, why),
				"run `ember kernel fetch`, then `ember doctor` again")
		}
		return Check{Name: "accel", Status: "pass",
			Detail: "not decided yet: " + why + "; the first create boots the guest kernel under KVM for a moment to decide"}
	}
	if cfg.KVMDevice != "" {
		if d, err := qemu.New(qemu.Options{QEMUPath: drv.Binary(), KVMDevice: cfg.KVMDevice}); err == nil {
			drv = d
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	accel, reason := drv.ProbeAccel(pctx, *probe)
	if cfg.Accel == hypervisor.AccelKVM {
		if accel != hypervisor.AccelKVM {
			return fail("accel", fmt.Sprintf("kvm: forced by accel = \"kvm\" in %s, but %s", lay.Config, reason),
				fmt.Sprintf("set accel = \"auto\" (or \"tcg\") in %s", lay.Config))
		}
		return pass("accel", fmt.Sprintf("kvm: forced by accel = \"kvm\" in %s; %s", lay.Config, reason))
	}
	if accel != hypervisor.AccelKVM {
		reason += "; using TCG"
	}
	return accelResult(accel, reason)
}

func accelResult(accel, reason string) Check {
	if accel == hypervisor.AccelKVM {
		return pass("accel", "kvm: "+reason)
	}
	return warn("accel", "tcg (software emulation, slower): "+reason,
		"VMs work; for KVM speed run ember on a host whose KVM runs guests (bare metal, or nested virtualisation enabled)")
}

// daemonAccel asks a running daemon for its decision; ok is false when none
// answers or it has not decided yet.
func daemonAccel(ctx context.Context, lay layout.Layout) (wire.DaemonInfo, bool) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	info, err := client.Do(ctx, &client.Client{Socket: lay.Socket()}, wire.DaemonInfoMethod, wire.None{})
	if err != nil || info.Accel == "" {
		return info, false
	}
	return info, true
}

// doctorProbeSpec finds what the daemon would probe with: its kernel (the
// config's, else the newest unpacked one) and that kernel's initramfs (the
// daemon's cached one, or one built into a temporary folder that cleanup
// removes). nil and why when there is none yet.
func doctorProbeSpec(ctx context.Context, lay layout.Layout, want string) (_ *hypervisor.ProbeSpec, cleanup func(), why string) {
	cleanup = func() {}
	ks, err := kernel.List(lay.KernelsDir())
	if err != nil || len(ks) == 0 {
		return nil, cleanup, "no guest kernel yet"
	}
	sort.SliceStable(ks, func(i, j int) bool { return ks[i].Name > ks[j].Name })
	k := ks[0]
	if want != "" {
		i := slices.IndexFunc(ks, func(k kernel.Kernel) bool { return k.Name == want })
		if i < 0 {
			return nil, cleanup, fmt.Sprintf("kernel %q (the config's) is not in %s", want, lay.KernelsDir())
		}
		k = ks[i]
	}
	agent, err := findAgent("")
	if err != nil {
		return nil, cleanup, err.Error()
	}
	initrd, err := initramfsPath(lay.InitramfsDir(), k, agent)
	if err != nil {
		return nil, cleanup, fmt.Sprintf("initramfs for kernel %s: %v", k.Name, err)
	}
	if _, err := os.Stat(initrd); err != nil {
		dir, err := os.MkdirTemp("", "ember-doctor-")
		if err != nil {
			return nil, cleanup, err.Error()
		}
		cleanup = func() { os.RemoveAll(dir) }
		initrd = filepath.Join(dir, "initramfs.cpio.gz")
		if err := kernel.BuildInitramfs(ctx, k, agent, initrd); err != nil {
			return nil, cleanup, fmt.Sprintf("initramfs for kernel %s: %v", k.Name, err)
		}
	}
	return &hypervisor.ProbeSpec{Kernel: k.Vmlinuz, Initrd: initrd, Cmdline: probeCmdline}, cleanup, ""
}
