package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// A running VM's disk is copied by a QMP backup job (blockdev-backup,
// sync=full): QEMU copies the disk as the guest saw it when the job
// started, moving a cluster aside before the guest overwrites it, so
// the guest's filesystems need to be frozen only while the job starts.
// The target is a file the driver makes and hands to QEMU as a
// descriptor (add-fd): QEMU, sandboxed, opens no file by name. Nothing
// of the VM's own disk chain changes.

const (
	// backupPoll is how often BackupDisk asks QEMU how the job goes.
	backupPoll = 50 * time.Millisecond
	// backupCleanup bounds taking the job, node and descriptor back out
	// of QEMU after the copy, whatever ended it.
	backupCleanup = 30 * time.Second
)

// qmpDo runs one command on a connection of its own, so no QMP client
// waits behind a long copy.
func qmpDo(ctx context.Context, sock, cmd string, args any) (json.RawMessage, error) {
	q, err := dialQMP(ctx, sock)
	if err != nil {
		return nil, err
	}
	defer q.Close()
	return q.runArgs(cmd, args, nil)
}

// jobInfo is the part of a query-jobs entry BackupDisk reads.
type jobInfo struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

// jobStatus returns the job's status and error; "" when QEMU has no such job.
func jobStatus(ctx context.Context, sock, id string) (jobInfo, error) {
	raw, err := qmpDo(ctx, sock, "query-jobs", nil)
	if err != nil {
		return jobInfo{}, err
	}
	var jobs []jobInfo
	if err := json.Unmarshal(raw, &jobs); err != nil {
		return jobInfo{}, fmt.Errorf("decode query-jobs: %w", err)
	}
	for _, j := range jobs {
		if j.ID == id {
			return j, nil
		}
	}
	return jobInfo{}, nil
}

// waitJob polls until the job has concluded (or QEMU lost it).
func waitJob(ctx context.Context, sock, id string) (jobInfo, error) {
	for {
		j, err := jobStatus(ctx, sock, id)
		if err != nil || j.Status == "" || j.Status == "concluded" || j.Status == "null" {
			return j, err
		}
		select {
		case <-ctx.Done():
			return j, ctx.Err()
		case <-time.After(backupPoll):
		}
	}
}

func randomID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// BackupDisk implements hypervisor.DiskBackuper.
func (d *Driver) BackupDisk(ctx context.Context, s hypervisor.Spec, inst hypervisor.Instance, sizeBytes int64, out string, quiesce hypervisor.Quiesce) (err error) {
	if d.qemuImg == "" {
		_, err := FindQEMUImg()
		return fmt.Errorf("back up disk: %w", err)
	}
	if !d.Alive(inst) {
		return fmt.Errorf("back up disk: the vm's process %d is not running", inst.PID)
	}
	if sizeBytes <= 0 {
		return fmt.Errorf("back up disk: size %d", sizeBytes)
	}
	if _, err := os.Lstat(out); err == nil {
		return fmt.Errorf("back up disk: %s already exists", out)
	}
	if b, err := exec.CommandContext(ctx, d.qemuImg, "create", "-q", "-f", "qcow2", out, strconv.FormatInt(sizeBytes, 10)).CombinedOutput(); err != nil {
		os.Remove(out)
		return fmt.Errorf("back up disk: qemu-img create: %s: %w", strings.TrimSpace(string(b)), err)
	}
	var undo []func(context.Context)
	defer func() {
		// Everything given to QEMU is taken back with a fresh bound,
		// even when ctx ended; then the file goes on failure.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), backupCleanup)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i](cctx)
		}
		if err != nil {
			os.Remove(out)
		}
	}()
	f, err := os.OpenFile(out, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("back up disk: %w", err)
	}
	defer f.Close()
	id := "ember-backup-" + randomID()
	q, err := dialQMP(ctx, s.QMPSocket)
	if err != nil {
		return fmt.Errorf("back up disk: %w", err)
	}
	raw, err := q.runArgs("add-fd", map[string]any{"opaque": "backup " + out}, f)
	if err != nil {
		q.Close()
		return fmt.Errorf("back up disk: %w", err)
	}
	var added struct {
		FDSet int `json:"fdset-id"`
	}
	if err := json.Unmarshal(raw, &added); err != nil {
		q.Close()
		return fmt.Errorf("back up disk: decode add-fd: %w", err)
	}
	undo = append(undo, func(ctx context.Context) {
		if _, err := qmpDo(ctx, s.QMPSocket, "remove-fd", map[string]any{"fdset-id": added.FDSet}); err != nil {
			d.log.Warn("back up disk: remove-fd", "vm", s.Name, "err", err)
		}
	})
	_, err = q.runArgs("blockdev-add", map[string]any{"driver": "qcow2", "node-name": id,
		"file": map[string]any{"driver": "file", "filename": "/dev/fdset/" + strconv.Itoa(added.FDSet)}}, nil)
	q.Close()
	if err != nil {
		return fmt.Errorf("back up disk: %w", err)
	}
	undo = append(undo, func(ctx context.Context) {
		if _, err := qmpDo(ctx, s.QMPSocket, "blockdev-del", map[string]any{"node-name": id}); err != nil {
			d.log.Warn("back up disk: blockdev-del", "vm", s.Name, "err", err)
		}
	})

	thaw, err := quiesce(ctx)
	if err != nil {
		return fmt.Errorf("back up disk: %w", err)
	}
	_, err = qmpDo(ctx, s.QMPSocket, "blockdev-backup", map[string]any{"job-id": id, "device": "root", "target": id,
		"sync": "full", "auto-dismiss": false})
	if err == nil {
		undo = append(undo, func(ctx context.Context) {
			// Cancel a job that runs on (a no-op for one that concluded),
			// wait for it, and dismiss it.
			if j, _ := jobStatus(ctx, s.QMPSocket, id); j.Status != "" && j.Status != "concluded" {
				_, _ = qmpDo(ctx, s.QMPSocket, "job-cancel", map[string]any{"id": id})
				_, _ = waitJob(ctx, s.QMPSocket, id)
			}
			if _, err := qmpDo(ctx, s.QMPSocket, "job-dismiss", map[string]any{"id": id}); err != nil {
				d.log.Warn("back up disk: job-dismiss", "vm", s.Name, "err", err)
			}
		})
	}
	if terr := thaw(ctx); terr != nil && err == nil {
		err = terr
	}
	if err != nil {
		return fmt.Errorf("back up disk: %w", err)
	}
	j, err := waitJob(ctx, s.QMPSocket, id)
	switch {
	case err != nil:
		return fmt.Errorf("back up disk: %w", err)
	case j.Status == "":
		return errors.New("back up disk: qemu lost the backup job")
	case j.Error != "":
		return fmt.Errorf("back up disk: %.200s", j.Error)
	}
	return nil
}
