package kernel

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// HostTSCkHz returns the host's TSC rate in kHz, for tsc_early_khz= on the
// guest command line: under TCG the guest's TSC runs at the host's rate and
// the guest's own calibration sometimes hangs. Sources, best first: sysfs
// tsc_freq_khz, the kernel log ("tsc: Refined TSC clocksource calibration"
// or "tsc: Detected N MHz processor") via /dev/kmsg or dmesg, then
// /proc/cpuinfo "cpu MHz".
func HostTSCkHz() (int, error) {
	if b, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if v, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && v > 0 {
			return v, nil
		}
	}
	if log, err := readKmsg(); err == nil {
		if v, ok := tscFromKernelLog(log); ok {
			return v, nil
		}
	}
	if out, err := exec.Command("dmesg").Output(); err == nil {
		if v, ok := tscFromKernelLog(out); ok {
			return v, nil
		}
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if v, ok := tscFromCPUInfo(b); ok {
			return v, nil
		}
	}
	return 0, errors.New("host tsc rate unknown: no tsc_freq_khz, no tsc line in the kernel log, no cpu MHz in /proc/cpuinfo")
}

// readKmsg reads the kernel log records present now without blocking.
func readKmsg() ([]byte, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var out bytes.Buffer
	buf := make([]byte, 8192)
	for {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) {
			continue // record overwritten while reading: go on with the next
		}
		if err != nil || n <= 0 {
			break // EAGAIN: end of the log
		}
		out.Write(buf[:n])
		out.WriteByte('\n')
	}
	return out.Bytes(), nil
}

var (
	tscRefinedRE  = regexp.MustCompile(`tsc: Refined TSC clocksource calibration: ([0-9]+(?:\.[0-9]+)?) MHz`)
	tscDetectedRE = regexp.MustCompile(`tsc: Detected ([0-9]+(?:\.[0-9]+)?) MHz processor`)
	cpuMHzRE      = regexp.MustCompile(`(?m)^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)`)
)

// tscFromKernelLog prefers the refined calibration, which is the more exact
// of the two when the kernel made one.
func tscFromKernelLog(log []byte) (int, bool) {
	for _, re := range []*regexp.Regexp{tscRefinedRE, tscDetectedRE} {
		if m := re.FindSubmatch(log); m != nil {
			if v, err := mhzToKHz(string(m[1])); err == nil && v > 0 {
				return v, true
			}
		}
	}
	return 0, false
}

func tscFromCPUInfo(b []byte) (int, bool) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if m := cpuMHzRE.FindStringSubmatch(sc.Text()); m != nil {
			if v, err := mhzToKHz(m[1]); err == nil && v > 0 {
				return v, true
			}
		}
	}
	return 0, false
}

// mhzToKHz converts "2096.019" to 2096019 without float rounding.
func mhzToKHz(s string) (int, error) {
	whole, frac, _ := strings.Cut(s, ".")
	frac = (frac + "000")[:3]
	w, err := strconv.Atoi(whole)
	if err != nil {
		return 0, fmt.Errorf("parse MHz %q: %w", s, err)
	}
	f, err := strconv.Atoi(frac)
	if err != nil {
		return 0, fmt.Errorf("parse MHz %q: %w", s, err)
	}
	return w*1000 + f, nil
}
