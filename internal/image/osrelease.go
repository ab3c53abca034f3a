package image

import (
	"bufio"
	"bytes"
	"os"
	"strings"
)

// HostOSRelease is where the host's os-release file is (os-release(5)).
const HostOSRelease = "/etc/os-release"

// Codename is the VERSION_CODENAME of an os-release file's content
// (os-release(5): KEY=VALUE lines, values maybe quoted), "" when it has
// none.
func Codename(osRelease []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(osRelease))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if ok && k == "VERSION_CODENAME" {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// HostCodename is the host's release codename ("bookworm"), "" when its
// os-release does not say.
func HostCodename() string {
	b, err := os.ReadFile(HostOSRelease)
	if err != nil {
		return ""
	}
	return Codename(b)
}
