package qemu

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	refinedTSC  = regexp.MustCompile(`Refined TSC clocksource calibration: ([0-9.]+) MHz`)
	detectedTSC = regexp.MustCompile(`tsc: Detected ([0-9.]+) MHz`)
)

// HostTSCKHz returns the host's TSC rate in kHz, or 0 if unknown. It prefers
// the host kernel's own calibration from its log (/dev/kmsg, readable by
// root) and falls back to /proc/cpuinfo's "cpu MHz".
func HostTSCKHz() int {
	if khz := tscFromKmsg(); khz > 0 {
		return khz
	}
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return tscFromCPUInfo(b)
}

func tscFromKmsg() int {
	// Non-blocking, so reading stops at the end of the buffer instead of
	// waiting for new messages.
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	// Raw reads: an *os.File would hand the non-blocking fd to Go's poller,
	// which waits for more messages instead of returning EAGAIN.
	defer unix.Close(fd)
	var all bytes.Buffer
	buf := make([]byte, 8192) // each read returns one record, at most 8 KiB
	for i := 0; i < 100000; i++ {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.EINTR) {
			continue // EPIPE: a record was overwritten while reading; skip it
		}
		if err != nil || n <= 0 {
			break
		}
		all.Write(buf[:n])
	}
	return tscFromLog(all.Bytes())
}

// tscFromLog finds the TSC rate in kernel log text; the refined calibration
// wins over the early estimate.
func tscFromLog(b []byte) int {
	for _, re := range []*regexp.Regexp{refinedTSC, detectedTSC} {
		if m := re.FindSubmatch(b); m != nil {
			if khz := mhzToKHz(string(m[1])); khz > 0 {
				return khz
			}
		}
	}
	return 0
}

func tscFromCPUInfo(b []byte) int {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			return mhzToKHz(strings.TrimSpace(v))
		}
	}
	return 0
}

func mhzToKHz(s string) int {
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0
	}
	return int(f*1000 + 0.5)
}
