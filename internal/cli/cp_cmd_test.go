package cli

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

func TestCpArg(t *testing.T) {
	for _, c := range []struct {
		arg, vm, path string
		isVM          bool
	}{
		{"vm1:/work", "vm1", "/work", true},
		{"vm1:/", "vm1", "/", true},
		{"./a:b", "", "./a:b", false},
		{"dir/x:y", "", "dir/x:y", false},
		{"-", "", "-", false},
		{"/abs", "", "/abs", false},
	} {
		vm, p, isVM, err := cpArg(c.arg)
		if err != nil || vm != c.vm || p != c.path || isVM != c.isVM {
			t.Errorf("cpArg(%q) = %q %q %v %v", c.arg, vm, p, isVM, err)
		}
	}
	for _, arg := range []string{"", ":/x", "vm1:relative", "vm1:"} {
		if _, _, _, err := cpArg(arg); err == nil {
			t.Errorf("cpArg(%q): no error", arg)
		}
	}
}

func TestCpUsageErrors(t *testing.T) {
	home := noDaemon(t)
	for args, want := range map[string]string{
		"cp a b":           "neither SRC nor DST is in a VM",
		"cp v1:/a v2:/b":   "both SRC and DST are in VMs",
		"cp a v1:relative": "must be absolute",
	} {
		_, errOut, code := cli(home, strings.Fields(args)...)
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("ember %s: exit %d, stderr %q; want 2 and %q", args, code, errOut, want)
		}
	}
}

// tarOf is an archive of entries: a name ending in / is a folder, "->"
// in it makes a symlink, anything else a file holding its name.
func tarOf(t *testing.T, names ...string) string {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		h := &tar.Header{Name: n, Mode: 0o755, Typeflag: tar.TypeReg, Size: int64(len(n))}
		if name, to, ok := strings.Cut(n, "->"); ok {
			h = &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: to, Mode: 0o777}
		} else if strings.HasSuffix(n, "/") {
			h = &tar.Header{Name: n, Typeflag: tar.TypeDir, Mode: 0o750}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(n))
		}
	}
	tw.Close()
	return buf.String()
}

// A copy out of a VM unpacks what the daemon sends (the guest's files)
// with the host user's rights into DST; a stream that would write
// through a symlink is refused with 2 and leaves nothing.
func TestCpOutUnpacksOnlyUnderDST(t *testing.T) {
	fd := newFakeDaemon(t)
	dst, outside := t.TempDir(), t.TempDir()
	fd.on(wire.VMCopyOut.Name, streamExit(tarOf(t, "x/", "x/run", "x/l->/etc/passwd"), 0))
	_, errOut, code := cli(fd.home, "cp", "v1:/srv/x", dst)
	if code != 0 || !strings.Contains(errOut, "copied 3 entries") {
		t.Fatalf("cp out: exit %d, stderr %q", code, errOut)
	}
	if b, _ := os.ReadFile(filepath.Join(dst, "x/run")); string(b) != "x/run" {
		t.Errorf("x/run holds %q", b)
	}
	if fi, err := os.Stat(filepath.Join(dst, "x/run")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("x/run: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(dst, "x/l")); err != nil || l != "/etc/passwd" {
		t.Errorf("x/l: %q %v", l, err)
	}
	var p wire.CopyOutParams
	if reqs := fd.requests(wire.VMCopyOut.Name); len(reqs) != 1 || json.Unmarshal(reqs[0], &p) != nil || p != (wire.CopyOutParams{Ref: "v1", Path: "/srv/x"}) {
		t.Errorf("requests: %s", reqs)
	}

	fd.on(wire.VMCopyOut.Name, streamExit(tarOf(t, "y/", "y/l->"+outside, "y/l/evil"), 0))
	_, errOut, code = cli(fd.home, "cp", "v1:/srv/y", dst)
	if code != 2 || !strings.Contains(errOut, "y/l/evil") {
		t.Errorf("hostile stream: exit %d, stderr %q; want 2 naming the entry", code, errOut)
	}
	if list, _ := os.ReadDir(outside); len(list) > 0 {
		t.Errorf("written outside: %v", list)
	}
	if _, err := os.Lstat(filepath.Join(dst, "y")); err == nil {
		t.Errorf("the refused copy left %s", filepath.Join(dst, "y"))
	}
}

// On a terminal a copy shows how far it got on one line, cleared before
// the summary.
func TestCpProgressOnATerminal(t *testing.T) {
	fd := newFakeDaemon(t)
	archive := tarOf(t, "x/", "x/a", "x/b")
	fd.on(wire.VMCopyOut.Name, func(_ wire.Request, c net.Conn) {
		reply(c, wire.Response{Stream: true})
		// The folder and the first file, then a pause the progress
		// line shows, then the rest.
		wire.WriteFrame(c, wire.FrameStdout, []byte(archive[:2048]))
		time.Sleep(500 * time.Millisecond)
		wire.WriteFrame(c, wire.FrameStdout, []byte(archive[2048:]))
		wire.WriteJSONFrame(c, wire.FrameExit, wire.Exit{})
	})
	dst := t.TempDir()
	code, out := onTerminal(t, context.Background(), fd.home, "cp", "v1:/x", dst)
	if code != 0 || !regexp.MustCompile(`^\r\x1b\[Kcopying: \d entries \(\dB\) \(0\.\ds\)`).MatchString(out) ||
		!strings.HasSuffix(out, "\r\x1b[Kcopied 3 entries (6B) to "+dst+"\r\n") {
		t.Errorf("cp on a terminal: exit %d\n%q", code, out)
	}
}
