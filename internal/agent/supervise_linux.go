package agent

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/guestproto"
)

// Shutdown timings: how long processes get to exit after SIGTERM, and
// after SIGKILL, before the root is remounted read-only regardless.
const (
	termGrace     = 3 * time.Second
	killGrace     = 1 * time.Second
	restartPause  = 500 * time.Millisecond
	serverCommand = "/proc/self/exe"
)

// superviseAndWait runs the SSH server as a child, reaps every process
// that ends up as PID 1's child, restarts the server if it dies, and
// shuts the VM down on a signal. It never returns.
//
// The server's host key is made here, once per boot, and handed to every
// server it starts: the daemon pins the key the first server announced,
// so a restarted server must hold the same one.
func superviseAndWait(sigs <-chan os.Signal) {
	first, err := newHostKeyPEM()
	if err != nil {
		fatal(err)
	}
	var hostKey atomic.Pointer[[]byte]
	hostKey.Store(&first)
	// A server that reidentified a restored guest sends its new key back
	// on this pipe: a restarted server must hold that one.
	keyR, keyW, err := os.Pipe()
	if err != nil {
		fatal(err)
	}
	go takeNewKeys(keyR, &hostKey)
	var serverPid atomic.Int64
	serverDied := make(chan unix.WaitStatus, 8)
	go reap(&serverPid, serverDied)

	start := func() {
		pid, err := startServer(*hostKey.Load(), keyW)
		if err != nil {
			consolef("error: start ssh server: %v", err)
			return
		}
		serverPid.Store(int64(pid))
	}
	start()
	for {
		select {
		case sig := <-sigs:
			shutdown(sig.String(), rebootSignal(sig))
		case ws := <-serverDied:
			consolef("ssh server exited (%s), restarting", waitString(ws))
			time.Sleep(restartPause)
			start()
		}
	}
}

// startServer starts "ember-agent serve --from-cmdline" with the console
// as its output and the host key (PEM) on a pipe as file descriptor 3, so
// the key is never in a file or on a command line. Its exit status is
// collected by reap, never by os.
func startServer(hostKey []byte, keyOut *os.File) (int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("host key pipe: %w", err)
	}
	defer r.Close()
	// The key is far below a pipe's capacity: the write cannot block.
	_, err = w.Write(hostKey)
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("host key pipe: %w", err)
	}
	p, err := os.StartProcess(serverCommand, []string{"ember-agent", "serve", "--from-cmdline", "--host-key-fd", "3", "--key-out-fd", "4"}, &os.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=" + DefaultPath, "HOME=/root"},
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr, r, keyOut},
	})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	// Release drops os's handle (a pidfd); the reaper owns the status.
	p.Release()
	return pid, nil
}

// reap collects every exited child of PID 1: the server and all orphans
// that were re-parented here.
func reap(serverPid *atomic.Int64, serverDied chan<- unix.WaitStatus) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			// ECHILD: nothing to wait for (the server is being
			// restarted); try again shortly.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if int64(pid) == serverPid.Load() {
			serverPid.Store(0)
			select {
			case serverDied <- ws:
			default:
			}
		}
	}
}

func waitString(ws unix.WaitStatus) string {
	if ws.Signaled() {
		return "signal " + ws.Signal().String()
	}
	return "exit status " + strconv.Itoa(ws.ExitStatus())
}

// shutdownSignals are what PID 1 acts on, as busybox init reads them
// (busybox's reboot, poweroff and halt send them): SIGTERM reboots, as
// does SIGINT (Ctrl-Alt-Del); SIGUSR2 powers off, as do SIGUSR1 (halt:
// a VM that halts is off) and SIGPWR. The server asks for a power-off
// with SIGUSR2 (the daemon's stop).
var shutdownSignals = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR}

// rebootSignal reports whether sig asks for a reboot rather than a
// power-off.
func rebootSignal(sig os.Signal) bool { return sig == unix.SIGTERM || sig == unix.SIGINT }

// shutdown stops every process, makes the root filesystem clean, and
// reboots or powers off. It never returns.
func shutdown(reason string, restart bool) {
	consolef("shutting down (%s)", reason)
	unix.Kill(-1, unix.SIGTERM)
	waitForProcesses(termGrace)
	unix.Kill(-1, unix.SIGKILL)
	waitForProcesses(killGrace)
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		consolef("warning: remount root read-only: %v", err)
	}
	unix.Sync()
	if restart {
		consoleLine(guestproto.RebootLine)
		reboot()
	}
	consoleLine(guestproto.PowerOffLine)
	powerOff()
}

// waitForProcesses polls until no user process other than PID 1 is left
// (zombies count as gone: the reaper collects them) or d passes.
func waitForProcesses(d time.Duration) {
	deadline := time.Now().Add(d)
	for userProcesses() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// pfKthread is PF_KTHREAD in /proc/PID/stat's flags.
const pfKthread = 0x00200000

func userProcesses() int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == 1 {
			continue
		}
		stat, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// Fields after the command name, which may itself hold ") ".
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		flags, _ := strconv.ParseUint(f[6], 10, 64)
		if flags&pfKthread != 0 {
			continue
		}
		n++
	}
	return n
}

// takeNewKeys reads the host keys servers send back after a reidentify
// (PEM blocks, one per write) and keeps the last valid one for the next
// server started. What is not a key is dropped; the buffer is bounded.
func takeNewKeys(r io.Reader, hostKey *atomic.Pointer[[]byte]) {
	var buf []byte
	chunk := make([]byte, 4096)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			block, rest := pem.Decode(buf)
			if block == nil {
				break
			}
			buf = rest
			k := pem.EncodeToMemory(block)
			if _, err := readHostKey(bytes.NewReader(k)); err == nil {
				hostKey.Store(&k)
			}
		}
		if len(buf) > maxHostKeyPEM {
			buf = nil
		}
		if err != nil {
			return
		}
	}
}
