package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/emberhq/ember/internal/hypervisor"
	"golang.org/x/sys/unix"
)

// procStat is the part of /proc/PID/stat that tells one process from another.
type procStat struct {
	State     byte   // R, S, D, Z, T, ...
	StartTime uint64 // clock ticks after boot
}

// readProcStat parses /proc/PID/stat. The command name (field 2) may contain
// spaces and parentheses, so fields are counted from its last ')'.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(b)
}

func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed stat line")
	}
	f := strings.Fields(string(b[i+1:]))
	// After the name: field 3 (state) is f[0], field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("malformed stat line")
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat starttime: %w", err)
	}
	return procStat{State: f[0][0], StartTime: st}, nil
}

// instanceOf records pid with its start time.
func instanceOf(pid int) (hypervisor.Instance, error) {
	st, err := readProcStat(pid)
	if err != nil {
		return hypervisor.Instance{}, fmt.Errorf("read start time of pid %d: %w", pid, err)
	}
	return hypervisor.Instance{PID: pid, StartTime: st.StartTime}, nil
}

// alive reports whether inst still names a live, non-zombie process. A zero
// StartTime (unknown) matches any process with that PID.
func alive(inst hypervisor.Instance) bool {
	if inst.PID <= 0 {
		return false
	}
	if err := unix.Kill(inst.PID, 0); err != nil && !errors.Is(err, unix.EPERM) {
		return false
	}
	st, err := readProcStat(inst.PID)
	if err != nil {
		return false
	}
	if inst.StartTime != 0 && st.StartTime != inst.StartTime {
		return false
	}
	return st.State != 'Z' && st.State != 'X'
}

// killInstance sends SIGKILL if inst is still the same process.
func killInstance(inst hypervisor.Instance) error {
	if !alive(inst) {
		return nil
	}
	if err := unix.Kill(inst.PID, syscall.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill pid %d: %w", inst.PID, err)
	}
	return nil
}

// findByArg lists live QEMU processes with an argument containing sub.
func findByArg(sub string) []hypervisor.Instance {
	want := []byte(sub)
	return findProcs(func(cmdline []byte) bool {
		argv0, _, _ := bytes.Cut(cmdline, []byte{0})
		// Only QEMU: a user's `tail -f` of a console log names the folder too.
		return strings.Contains(filepath.Base(string(argv0)), "qemu") && bytes.Contains(cmdline, want)
	})
}

// findProcs lists live processes (not this one) whose raw command line
// matches.
func findProcs(match func(cmdline []byte) bool) []hypervisor.Instance {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []hypervisor.Instance
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !match(b) {
			continue
		}
		if inst, err := instanceOf(pid); err == nil && alive(inst) {
			out = append(out, inst)
		}
	}
	return out
}

// readPIDFile returns the pid QEMU wrote, or 0 if there is none yet.
func readPIDFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	pid, err := strconv.Atoi(s)
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("pid file %s holds %q", path, s)
	}
	return pid, nil
}

// ProcessesWithArg lists the live QEMU processes, of any daemon or none,
// with an argument containing sub (doctor's orphan check), and each one's
// command line, arguments joined by spaces.
func ProcessesWithArg(sub string) map[int]string {
	out := map[int]string{}
	for _, inst := range findByArg(sub) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(inst.PID), "cmdline"))
		if err == nil {
			out[inst.PID] = strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")
		}
	}
	return out
}
