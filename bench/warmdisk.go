package main

// The warm snapshot's disk in the snapshot section: what it takes on the
// host as saved now (a qcow2 of the first boot's own clusters over the
// image file) against the same disk flattened (how it was saved before).

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/hypervisor/qemu"
	"github.com/emberhq/ember/internal/wire"
)

// warmDisk is the host disk space (allocated bytes) of an image's warm
// snapshot's disk, of that disk flattened, and of the image's file.
type warmDisk struct {
	image                 string
	overlay, flat, imgUse int64
}

// fileBlocks is what path takes on the host's disk, as du counts.
func fileBlocks(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// measureWarmDisk measures the warm snapshot of image in env (one, made
// by a create before): its disk, and that disk flattened into a sparse
// raw file by qemu-img convert, through its header's chain.
func measureWarmDisk(env *benchEnv, image string) (warmDisk, error) {
	w := warmDisk{image: image}
	out, err := env.ember("snapshot", "ls", "--all", "--json")
	if err != nil {
		return w, err
	}
	var sns []wire.Snapshot
	if err := json.Unmarshal([]byte(out), &sns); err != nil {
		return w, err
	}
	var disk string
	for _, sn := range sns {
		if sn.Image == image && strings.HasPrefix(sn.Name, ".warm-") {
			disk = filepath.Join(env.home, "state", "snapshots", sn.ID, "disk.qcow2")
		}
	}
	if disk == "" {
		return w, fmt.Errorf("no warm snapshot of image %s", image)
	}
	if w.overlay, err = fileBlocks(disk); err != nil {
		return w, err
	}
	var imgs []wire.Image
	if out, err = env.ember("image", "inspect", image); err != nil {
		return w, err
	}
	if err := json.Unmarshal([]byte(out), &imgs); err != nil || len(imgs) != 1 {
		return w, fmt.Errorf("image inspect %s: %v", image, err)
	}
	if w.imgUse, err = fileBlocks(imgs[0].Path); err != nil {
		return w, err
	}
	qemuImg, err := qemu.FindQEMUImg()
	if err != nil {
		return w, err
	}
	flat := filepath.Join(env.home, "flat.raw")
	defer os.Remove(flat)
	if b, err := exec.Command(qemuImg, "convert", "-q", "-f", "qcow2", "-O", "raw", disk, flat).CombinedOutput(); err != nil {
		return w, fmt.Errorf("qemu-img convert: %s: %w", b, err)
	}
	w.flat, err = fileBlocks(flat)
	return w, err
}

// mib is n bytes in MiB with one decimal, under 1 MiB in KiB.
func mib(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
