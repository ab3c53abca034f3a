package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

// DefaultProbeTimeout bounds the KVM boot of ProbeAccel when the ProbeSpec
// sets none. A working KVM reaches the agent of the Debian cloud kernel in
// well under a second; the margin is for a loaded host.
const DefaultProbeTimeout = 6 * time.Second

// probeTailLines and probeLineMax bound what a probe keeps of the guest's
// console: enough to say where a boot stalled, whatever the guest prints.
const (
	probeTailLines = 20
	probeLineMax   = 256
)

// ProbeAccel implements hypervisor.AccelProber. KVM counts only if the KVM
// device opens and the real guest kernel, booted under -accel kvm with the
// CPU model VMs get, reaches the agent (which prints hypervisor.ProbeOKLine
// and powers off) within p.Timeout. Otherwise the answer is TCG and the
// reason says where the KVM boot stalled, read from the guest's console.
func (d *Driver) ProbeAccel(ctx context.Context, p hypervisor.ProbeSpec) (accel, reason string) {
	if err := openKVM(d.kvmDevice); err != nil {
		return hypervisor.AccelTCG, err.Error()
	}
	if p.Kernel == "" {
		return hypervisor.AccelTCG, "no guest kernel to prove KVM with"
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultProbeTimeout
	}
	r := d.bootProbe(ctx, p, timeout)
	if r.ok {
		return hypervisor.AccelKVM, fmt.Sprintf("a KVM guest booted the kernel to its agent in %s",
			r.elapsed.Round(10*time.Millisecond))
	}
	return hypervisor.AccelTCG, "KVM does not run guests here: " + r.why
}

// openKVM says why the KVM device cannot be used, or nil.
func openKVM(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	switch {
	case err == nil:
		f.Close()
		return nil
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("%s does not exist (no KVM on this host)", dev)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("cannot open %s: permission denied (join the group that owns it, usually kvm)", dev)
	default:
		return fmt.Errorf("cannot open %s: %v", dev, errors.Unwrap(err))
	}
}

type probeResult struct {
	ok      bool
	elapsed time.Duration
	why     string // when !ok: what happened, for a person
}

// probeArgs is QEMU's command line for a probe: the accelerator and CPU
// model exactly as buildArgs gives VMs, confined the same way (the kernel
// and initramfs as inherited descriptors), no disk or network, the
// console on stdout.
func probeArgs(p hypervisor.ProbeSpec, seccomp bool) []string {
	a := []string{"-M", "microvm", "-accel", hypervisor.AccelKVM, "-cpu", "host"}
	if seccomp {
		a = append(a, "-sandbox", seccompPolicy)
	}
	a = append(a, "-smp", "1", "-m", "128", "-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-serial", "stdio", "-kernel", procFD(fdKernel))
	if p.Initrd != "" {
		a = append(a, "-initrd", procFD(fdInitrd))
	}
	return append(a, "-append", p.Cmdline)
}

// bootProbe runs the probe guest until the agent's line, QEMU's exit, the
// timeout or ctx, whichever comes first.
func (d *Driver) bootProbe(ctx context.Context, p hypervisor.ProbeSpec, timeout time.Duration) probeResult {
	files := &launchFiles{}
	defer files.close()
	k, err := d.openReadable(p.Kernel, "kernel")
	if err != nil {
		return probeResult{why: err.Error()}
	}
	files.set(fdKernel, k)
	if p.Initrd != "" {
		i, err := d.openReadable(p.Initrd, "initramfs")
		if err != nil {
			return probeResult{why: err.Error()}
		}
		files.set(fdInitrd, i)
	}
	cmd := exec.Command(d.qemu, probeArgs(p, d.seccomp)...)
	cmd.ExtraFiles = files.slots
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return probeResult{why: fmt.Sprintf("console pipe: %v", err)}
	}
	var stderr headBuffer
	cmd.Stderr = &stderr
	// Own session and process group, killed as a whole: a wrapper
	// script's children too. As the VMs' user, with the KVM device's group.
	cmd.SysProcAttr = d.sysProcAttr(hypervisor.AccelKVM)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return probeResult{why: fmt.Sprintf("run %s: %v", d.qemu, err)}
	}
	files.close()
	console := &consoleTail{}
	okc := make(chan struct{})
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		console.read(stdout, hypervisor.ProbeOKLine, okc)
	}()
	exited := make(chan error, 1)
	go func() {
		<-readDone // Wait closes the pipe; read it to the end first
		exited <- cmd.Wait()
	}()
	kill := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-okc:
		elapsed := time.Since(start)
		// The agent powers off right after its line; do not wait long.
		select {
		case <-exited:
		case <-time.After(2 * time.Second):
			kill()
			<-exited
		}
		return probeResult{ok: true, elapsed: elapsed}
	case err := <-exited:
		if console.sawOK() {
			return probeResult{ok: true, elapsed: time.Since(start)}
		}
		if err != nil {
			msg := firstLine(strings.TrimSpace(stderr.String()))
			if msg == "" {
				msg = err.Error()
			}
			return probeResult{why: "qemu -accel kvm failed: " + msg}
		}
		return probeResult{why: "the KVM guest powered off before reaching its agent" + lastLineNote(console.lines())}
	case <-timer.C:
		kill()
		<-exited
		return probeResult{why: stallReason(console.lines(), timeout)}
	case <-ctx.Done():
		kill()
		<-exited
		return probeResult{why: fmt.Sprintf("probe interrupted: %v", ctx.Err())}
	}
}

// stallReason turns the console of a KVM boot that did not reach the agent
// into a sentence that says where it stopped.
func stallReason(lines []string, timeout time.Duration) string {
	var last string
	setupOnly, decompressed := true, false
	for _, l := range lines {
		if l == "" {
			continue
		}
		last = l
		switch {
		case strings.HasPrefix(l, "Probing EDD"):
			// printed by the kernel's real-mode setup code
		case strings.HasPrefix(l, "Decompressing Linux"), strings.HasPrefix(l, "Parsing ELF"),
			strings.HasPrefix(l, "Booting the kernel"), strings.HasPrefix(l, "early console in"):
			decompressed = true
			setupOnly = false
		default:
			setupOnly = false
		}
	}
	switch {
	case last == "":
		return fmt.Sprintf("the KVM guest printed nothing in %s: its vCPU does not run guest code", timeout)
	case setupOnly:
		return fmt.Sprintf("KVM vCPU stops after real-mode setup (console: %q, then nothing for %s): nested virtualisation incomplete", last, timeout)
	case decompressed:
		return fmt.Sprintf("KVM vCPU stops after the kernel was decompressed (console: %q, then nothing for %s): nested virtualisation incomplete", last, timeout)
	default:
		return fmt.Sprintf("the KVM guest kernel stalled before its agent (last console line %q; %s in all)", last, timeout)
	}
}

func lastLineNote(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		if lines[i] != "" {
			return fmt.Sprintf(" (last console line %q)", lines[i])
		}
	}
	return ""
}

// consoleTail keeps the last lines a guest printed, each cut to
// probeLineMax bytes, and whether the agent's line went by.
type consoleTail struct {
	mu   sync.Mutex
	tail []string
	ok   bool
}

// read consumes r line by line until EOF; it closes okc once a line holds
// want. Lines are read in bounded pieces, so a guest that never prints a
// newline costs no more than one piece.
func (c *consoleTail) read(r io.Reader, want string, okc chan struct{}) {
	br := bufio.NewReaderSize(r, 4096)
	var cur []byte
	flush := func() {
		line := strings.TrimRight(string(cur), "\r")
		cur = cur[:0]
		c.mu.Lock()
		defer c.mu.Unlock()
		if !c.ok && strings.Contains(line, want) {
			c.ok = true
			close(okc)
		}
		c.tail = append(c.tail, printable(line))
		if len(c.tail) > probeTailLines {
			c.tail = c.tail[len(c.tail)-probeTailLines:]
		}
	}
	for {
		frag, err := br.ReadSlice('\n')
		body := frag
		if err == nil {
			body = frag[:len(frag)-1]
		}
		if room := probeLineMax - len(cur); room > 0 {
			cur = append(cur, body[:min(room, len(body))]...)
		}
		switch {
		case err == nil:
			flush()
		case errors.Is(err, bufio.ErrBufferFull):
		default:
			if len(cur) > 0 {
				flush()
			}
			return
		}
	}
}

func (c *consoleTail) lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.tail...)
}

func (c *consoleTail) sawOK() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ok
}

// printable drops control characters: console text ends up in logs and on
// terminals.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// headBuffer keeps the first 4 KiB written to it: QEMU's error comes first.
type headBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (t *headBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if room := 4096 - len(t.b); room > 0 {
		t.b = append(t.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (t *headBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
