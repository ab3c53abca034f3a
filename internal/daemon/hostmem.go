package daemon

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"strings"
)

// processMemory is the private memory process pid holds resident, in
// bytes: RssAnon + RssShmem of /proc/PID/status (a VM's guest pages,
// whether anonymous or in a memfd, and the hypervisor's own heap and
// code caches; not its program's file pages, which every VM shares).
// 0 when it cannot be read.
func processMemory(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	return statusMemory(b)
}

// statusMemory sums RssAnon and RssShmem of a /proc/PID/status text.
func statusMemory(status []byte) int64 {
	var total int64
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "RssAnon" && k != "RssShmem") {
			continue
		}
		f := strings.Fields(v) // "1234 kB"
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil && n >= 0 {
			total += n << 10
		}
	}
	return total
}
