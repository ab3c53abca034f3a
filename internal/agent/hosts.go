package agent

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/emberhq/ember/internal/guestproto"
)

// maxHostsFile bounds what writeHostsEntry reads of the image's
// /etc/hosts.
const maxHostsFile = 1 << 20

// defaultHosts starts an /etc/hosts the image did not have.
const defaultHosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

// writeHostsEntry makes path name guestproto.HostName at
// guestproto.HostAddr: the image's other lines are kept, any older line
// naming HostName is dropped. The file is replaced whole (written beside
// it, then renamed); a symlink there is replaced by a plain file, as
// writeResolvConf does.
func writeHostsEntry(path string) error {
	var old []byte
	if st, err := os.Lstat(path); err == nil && st.Mode().IsRegular() {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		old, err = io.ReadAll(io.LimitReader(f, maxHostsFile+1))
		f.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		if len(old) > maxHostsFile {
			return fmt.Errorf("%s is longer than %d bytes; %s not added", path, maxHostsFile, guestproto.HostName)
		}
	} else if err == nil || !errors.Is(err, os.ErrNotExist) {
		old = nil // a symlink or something else: replaced
	}
	if old == nil {
		old = []byte(defaultHosts)
	}
	var b bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(old))
	sc.Buffer(make([]byte, 0, 4096), maxHostsFile)
	for sc.Scan() {
		line := sc.Text()
		body, _, _ := strings.Cut(line, "#")
		names := strings.Fields(body)
		drop := false
		for _, n := range names[min(1, len(names)):] {
			if strings.EqualFold(n, guestproto.HostName) {
				drop = true
			}
		}
		if !drop {
			b.WriteString(line)
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "%s\t%s\n", guestproto.HostAddr, guestproto.HostName)
	os.MkdirAll(filepath.Dir(path), 0o755)
	tmp := path + ".ember-new"
	if err := os.WriteFile(tmp, b.Bytes(), 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
