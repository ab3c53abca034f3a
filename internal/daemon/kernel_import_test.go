package daemon

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/wire"
)

// writeBzImage writes a file with a bzImage header naming release.
func writeBzImage(t *testing.T, path, release string) {
	t.Helper()
	img := make([]byte, 0x1000)
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(img[0x20E:], 0x300)
	copy(img[0x500:], release+" (test@example) #1 SMP\x00")
	if err := os.WriteFile(path, img, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The client passes the kernel and its tree as descriptors; the daemon
// copies them, keeps in-tree symlinks, drops the ones that point out.
func TestKernelImportPassesDescriptors(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	writeBzImage(t, vmlinuz, "9.9.9-fd")
	mods := filepath.Join(src, "modules", "9.9.9-fd")
	for _, d := range []string{"kernel/drivers/virtio", "kernel/fs"} {
		if err := os.MkdirAll(filepath.Join(mods, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	guestModulesBuiltin(t, mods) // a kernel that can boot a guest
	// More files than one batch carries descriptors for.
	for i := 0; i < 3*wire.MaxImportBatchFDs; i++ {
		p := filepath.Join(mods, "kernel/fs", "m"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+strconv.Itoa(i)+".ko")
		if err := os.WriteFile(p, []byte("module "+strconv.Itoa(i)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	os.Symlink("kernel/fs", filepath.Join(mods, "alias"))
	os.Symlink("/usr/src/linux-headers-9.9.9-fd", filepath.Join(mods, "build"))
	var remarks strings.Builder
	k, err := client.ImportKernel(context.Background(), c, wire.KernelImportParams{Name: "fdk", Vmlinuz: vmlinuz, ModulesDir: mods}, &remarks)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	if k.Name != "fdk" || k.Release != "9.9.9-fd" || k.Source != "import" || k.Modules == "" {
		t.Fatalf("imported: %+v", k)
	}
	ents, _ := os.ReadDir(filepath.Join(k.Modules, "kernel/fs"))
	if len(ents) != 3*wire.MaxImportBatchFDs {
		t.Errorf("%d module files copied, want %d", len(ents), 3*wire.MaxImportBatchFDs)
	}
	if l, err := os.Readlink(filepath.Join(k.Modules, "alias")); err != nil || l != "kernel/fs" {
		t.Errorf("in-tree symlink: %q %v", l, err)
	}
	if _, err := os.Lstat(filepath.Join(k.Modules, "build")); err == nil {
		t.Error("a symlink out of the tree was kept")
	}
	if !strings.Contains(remarks.String(), "not kept: 1 symlinks that point out of the modules folder (build)") {
		t.Errorf("remarks: %q", remarks.String())
	}
	var ks []wire.Kernel
	if err := c.Call(context.Background(), wire.KernelList.Name, nil, &ks); err != nil || len(ks) == 0 {
		t.Fatalf("kernel ls: %v %+v", err, ks)
	}
	_, err = client.ImportKernel(context.Background(), c, wire.KernelImportParams{Name: "fdk", Vmlinuz: vmlinuz}, nil)
	wantCode(t, err, wire.CodeConflict)
}

// hostileImport opens a kernel.import stream by hand and sends frames
// (and descriptor messages) as a broken or hostile client would.
func hostileImport(t *testing.T, c *client.Client, name string, send func(s *client.Stream)) *wire.Error {
	t.Helper()
	s, err := c.OpenStream(context.Background(), wire.KernelImport.Name, wire.KernelImportParams{Name: name, Vmlinuz: "/x"})
	if err != nil {
		t.Fatalf("open kernel.import: %v", err)
	}
	defer s.Close()
	send(s)
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatalf("%s: the stream ended without an answer: %v", name, err)
		}
		if kind == wire.FrameExit {
			ex, _ := client.DecodeExit(payload)
			return ex.Error
		}
	}
}

func batch(t *testing.T, s *client.Stream, files []*os.File, entries ...wire.ImportEntry) {
	t.Helper()
	b, _ := json.Marshal(wire.ImportBatch{Entries: entries})
	if err := s.Send(wire.FrameImportEntries, b); err != nil {
		t.Fatal(err)
	}
	if len(files) > 0 {
		if err := s.SendFDs(files); err != nil {
			t.Fatal(err)
		}
	}
}

// Whatever a client sends on kernel.import, the daemon answers invalid
// with the reason, keeps no staging folder and no descriptor, and goes on
// answering.
func TestKernelImportHostileClient(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	src := t.TempDir()
	vmlinuz := filepath.Join(src, "bzImage")
	writeBzImage(t, vmlinuz, "9.9.9-x")
	var opened []*os.File
	open := func(p string) *os.File {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		opened = append(opened, f)
		return f
	}
	pr, pw, _ := os.Pipe()
	defer pr.Close()
	defer pw.Close()
	kernelEntry := wire.ImportEntry{Kind: wire.ImportKernel}
	root := wire.ImportEntry{Kind: wire.ImportRoot}
	before := openFDs(t)
	cases := []struct {
		name, want string
		send       func(s *client.Stream)
	}{
		{"fewer-fds", "1 descriptors, 2 announced", func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz)}, kernelEntry, root)
		}},
		{"more-fds", "more descriptors than the 1 announced", func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(vmlinuz), open(vmlinuz)}, kernelEntry)
		}},
		{"no-fds", "expected a descriptor message", func(s *client.Stream) {
			batch(t, s, nil, kernelEntry)
			_ = s.Send(wire.FrameStdinEOF, nil)
		}},
		{"pipe-kernel", "kernel file: not a regular file", func(s *client.Stream) {
			batch(t, s, []*os.File{pr}, kernelEntry)
		}},
		{"file-as-root", "is not a folder", func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(vmlinuz)}, kernelEntry, root)
		}},
		{"escape", `path "../../etc/cron.d/x" is not a clean path`, func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(src)}, kernelEntry, root)
			batch(t, s, []*os.File{open(vmlinuz)}, wire.ImportEntry{Kind: wire.ImportFile, Path: "../../etc/cron.d/x"})
		}},
		{"absolute", "is not a clean path", func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(src)}, kernelEntry, root)
			batch(t, s, nil, wire.ImportEntry{Kind: wire.ImportDir, Path: "/etc"})
		}},
		{"beneath-link", `lies beneath the symlink "l"`, func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(src)}, kernelEntry, root)
			batch(t, s, nil, wire.ImportEntry{Kind: wire.ImportSymlink, Path: "l", Target: "."},
				wire.ImportEntry{Kind: wire.ImportDir, Path: "l/x"})
		}},
		{"state", "is the state folder", func(s *client.Stream) {
			batch(t, s, []*os.File{open(vmlinuz), open(td.layout.State)}, kernelEntry, root)
		}},
		{"huge-batch", "an import batch holds 1..256 entries", func(s *client.Stream) {
			es := make([]wire.ImportEntry, wire.MaxImportBatch+1)
			for i := range es {
				es[i] = wire.ImportEntry{Kind: wire.ImportDir, Path: "d" + strconv.Itoa(i)}
			}
			batch(t, s, nil, es...)
		}},
		{"no-kernel", "no kernel file", func(s *client.Stream) {
			_ = s.Send(wire.FrameStdinEOF, nil)
		}},
		{"garbage", "bad batch", func(s *client.Stream) {
			_ = s.Send(wire.FrameImportEntries, []byte("{not json"))
		}},
	}
	for _, tc := range cases {
		err := hostileImport(t, c, tc.name, tc.send)
		for _, f := range opened {
			f.Close()
		}
		opened = nil
		if err == nil || err.Code != wire.CodeInvalid || !strings.Contains(err.Message, tc.want) {
			t.Errorf("%s: want invalid %q, got %v", tc.name, tc.want, err)
		}
		var ks []wire.Kernel
		if err := c.Call(context.Background(), wire.VMList.Name, nil, nil); err != nil {
			t.Fatalf("%s: ls after it: %v", tc.name, err)
		}
		if err := c.Call(context.Background(), wire.KernelList.Name, nil, &ks); err != nil || len(ks) != 0 {
			t.Fatalf("%s: kernels after it: %v %+v", tc.name, err, ks)
		}
	}
	if ents, _ := os.ReadDir(td.layout.KernelsDir()); len(ents) != 0 {
		t.Errorf("left in the kernels folder: %v", ents)
	}
	// The daemon runs in this process: it must hold none of the
	// descriptors it received (the test closed its own).
	if after := openFDs(t); after > before+2 {
		t.Errorf("descriptors: %d before, %d after", before, after)
	}
}
