package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// Snapshots of a running VM's memory and devices (QEMU's migration
// stream written to a file). QEMU, sandboxed, opens no file by name and
// may not spawn a program (so not `exec:cat > FILE`): the driver makes
// the file and hands QEMU its descriptor, through QMP getfd to save and
// as an inherited descriptor (-incoming fd:N) to restore.

var _ hypervisor.StateSaver = (*Driver)(nil)

// fdIncoming is the descriptor of the state a VM restores from
// (Spec.Incoming), after the shares'.
const fdIncoming = fdShare + maxShares

// stateFD is the name the saved state's descriptor has inside QEMU.
const stateFD = "ember-state"

// saveTimeout bounds one save: the stream is about as large as the
// guest memory in use (zero pages are skipped).
const saveTimeout = 5 * time.Minute

// SaveState implements hypervisor.StateSaver: the VM's vCPUs stop (QMP
// stop) and its memory and device state go into out, a new file; the VM
// stays stopped, with its disk flushed and released, until Resume. On
// failure out is removed; the VM stays stopped (the caller resumes it).
func (d *Driver) SaveState(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, out string) (err error) {
	if !alive(inst) {
		return fmt.Errorf("save vm %s: its process is gone", vmName(s))
	}
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("save vm %s: %w", vmName(s), err)
	}
	defer f.Close()
	defer func() {
		if err != nil {
			os.Remove(out)
		}
	}()
	sock, err := filepath.Abs(s.QMPSocket)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	q, err := dialQMPWithin(ctx, sock, saveTimeout)
	if err != nil {
		return fmt.Errorf("save vm %s: %w", vmName(s), err)
	}
	defer q.Close()
	if _, err := q.run("stop"); err != nil {
		return fmt.Errorf("save vm %s: %w", vmName(s), err)
	}
	if _, err := q.runArgs("getfd", map[string]any{"fdname": stateFD}, f); err != nil {
		return fmt.Errorf("save vm %s: %w", vmName(s), err)
	}
	if _, err := q.runArgs("migrate", map[string]any{"uri": "fd:" + stateFD}, nil); err != nil {
		return fmt.Errorf("save vm %s: %w", vmName(s), err)
	}
	for {
		raw, err := q.run("query-migrate")
		if err != nil {
			return fmt.Errorf("save vm %s: %w", vmName(s), err)
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return fmt.Errorf("save vm %s: query-migrate: %w", vmName(s), err)
		}
		switch st.Status {
		case "completed":
			return f.Sync()
		case "failed", "cancelled":
			return fmt.Errorf("save vm %s: the hypervisor's state save %s: %s", vmName(s), st.Status, printable(st.ErrorDesc))
		}
		select {
		case <-ctx.Done():
			_, _ = q.run("migrate_cancel")
			return fmt.Errorf("save vm %s: %w", vmName(s), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// incomingArgs is the option that makes QEMU load its state from the
// inherited descriptor before it runs.
func incomingArgs(s hypervisor.Spec) []string {
	if s.Incoming == "" {
		return nil
	}
	return []string{"-incoming", "fd:" + strconv.Itoa(fdIncoming)}
}
