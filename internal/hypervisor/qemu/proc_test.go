package qemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/hypervisor"
)

func TestParseProcStatOddName(t *testing.T) {
	line := "1234 (we ird) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n"
	st, err := parseProcStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if st.State != 'S' || st.StartTime != 987654 {
		t.Errorf("got %+v, want state S starttime 987654", st)
	}
	if _, err := parseProcStat([]byte("garbage")); err == nil {
		t.Error("garbage parsed")
	}
}

func TestAliveSelfAndReusedPID(t *testing.T) {
	self, err := instanceOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if !alive(self) {
		t.Error("own process not alive")
	}
	if alive(hypervisor.Instance{PID: self.PID, StartTime: self.StartTime + 1}) {
		t.Error("start time mismatch (reused pid) counted as alive")
	}
	if alive(hypervisor.Instance{}) {
		t.Error("zero instance alive")
	}
}

func TestAliveFalseForZombieAndExited(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep binary: %v", err)
	}
	inst, err := instanceOf(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !alive(inst) {
		t.Fatal("running child not alive")
	}
	if err := killInstance(inst); err != nil {
		t.Fatal(err)
	}
	// Not yet reaped: a zombie, which must not count as alive.
	deadline := time.Now().Add(5 * time.Second)
	for alive(inst) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(inst) {
		t.Error("killed (zombie) child still alive")
	}
	cmd.Wait()
	if alive(inst) {
		t.Error("reaped child still alive")
	}
}

func TestReadPIDFile(t *testing.T) {
	dir := t.TempDir()
	if pid, err := readPIDFile(filepath.Join(dir, "none")); pid != 0 || err != nil {
		t.Errorf("missing file: %d, %v", pid, err)
	}
	p := filepath.Join(dir, "p")
	os.WriteFile(p, []byte("4242\n"), 0o600)
	if pid, err := readPIDFile(p); pid != 4242 || err != nil {
		t.Errorf("got %d, %v", pid, err)
	}
	os.WriteFile(p, []byte("x"), 0o600)
	if _, err := readPIDFile(p); err == nil {
		t.Error("garbage pid accepted")
	}
}

func TestTSCParsing(t *testing.T) {
	log := []byte("6,28,296,-;tsc: Detected 2096.019 MHz processor\n6,90,1,-;tsc: Refined TSC clocksource calibration: 2095.998 MHz\n")
	if got := tscFromLog(log); got != 2095998 {
		t.Errorf("refined: %d", got)
	}
	if got := tscFromLog([]byte("tsc: Detected 2096.019 MHz processor")); got != 2096019 {
		t.Errorf("detected: %d", got)
	}
	if got := tscFromCPUInfo([]byte("processor\t: 0\ncpu MHz\t\t: 2596.128\n")); got != 2596128 {
		t.Errorf("cpuinfo: %d", got)
	}
	if got := tscFromLog([]byte("nothing")); got != 0 {
		t.Errorf("no tsc: %d", got)
	}
}

func TestHostTSCKHzReturns(t *testing.T) {
	// Must return (not block on /dev/kmsg); any value >= 0 is fine.
	if khz := HostTSCKHz(); khz < 0 {
		t.Errorf("HostTSCKHz = %d", khz)
	} else {
		t.Logf("host TSC: %d kHz", khz)
	}
}

func TestFindByArgOnlyQEMU(t *testing.T) {
	dir := t.TempDir()
	// A non-QEMU process naming the folder (a user's tail -f) is left alone.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := exec.Command("/bin/sh", "-c", "read x; true", dir+"/console.log")
	cmd.Stdin = r
	if err := cmd.Start(); err != nil {
		t.Skipf("no /bin/sh: %v", err)
	}
	r.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got := findByArg(dir + "/"); len(got) != 0 {
		t.Fatalf("matched a non-qemu process: %+v", got)
	}
}
