package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/hosttools"
)

func needTools(t *testing.T) (busybox, debugfs string) {
	t.Helper()
	bb, err := FindBusybox()
	if err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	if _, err := hosttools.Find("mkfs.ext4"); err != nil {
		t.Skipf("%v", err)
	}
	dfs, err := hosttools.Find("debugfs")
	if err != nil {
		t.Skipf("%v", err)
	}
	return bb, dfs
}

// debugfsRun runs one read-only debugfs request against the image.
func debugfsRun(t *testing.T, debugfs, img, req string) string {
	t.Helper()
	out, err := exec.Command(debugfs, "-R", req, img).CombinedOutput()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v: %s", req, err, out)
	}
	return string(out)
}

func TestBuildTiny(t *testing.T) {
	busybox, debugfs := needTools(t)
	dir := t.TempDir()
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("fake agent binary\n"), 0o600)
	out := filepath.Join(dir, "tiny.ext4")
	if err := BuildTiny(context.Background(), agent, busybox, out, 0); err != nil {
		t.Fatal(err)
	}

	info, err := Info(out)
	if err != nil {
		t.Fatal(err)
	}
	if info.Format != FormatExt4 || info.Label != TinyLabel {
		t.Fatalf("info = %+v, want ext4 labelled %s", info, TinyLabel)
	}
	if info.ApparentBytes != DefaultTinySizeMiB<<20 {
		t.Errorf("apparent size = %d, want %d", info.ApparentBytes, DefaultTinySizeMiB<<20)
	}
	// busybox is ~2 MB; ext4 metadata for 1 GiB is a few MB more. Anything
	// near the apparent size means the file was not written sparse.
	if info.AllocatedBytes > 64<<20 {
		t.Errorf("allocated %d bytes; the image should be sparse", info.AllocatedBytes)
	}
	t.Logf("tiny image: apparent %d MiB, allocated %.1f MiB", info.ApparentBytes>>20, float64(info.AllocatedBytes)/(1<<20))

	osr := debugfsRun(t, debugfs, out, "cat /etc/os-release")
	if !strings.Contains(osr, "ID=ember-tiny") {
		t.Errorf("os-release = %q", osr)
	}
	if got := debugfsRun(t, debugfs, out, "cat /sbin/ember-agent"); !strings.Contains(got, "fake agent binary") {
		t.Errorf("agent content = %q", got)
	}
	if got := debugfsRun(t, debugfs, out, "cat /etc/passwd"); !strings.Contains(got, "root:x:0:0:root:/root:/bin/sh") {
		t.Errorf("passwd = %q", got)
	}
	bin := debugfsRun(t, debugfs, out, "ls -l /bin")
	for _, want := range []string{"busybox", " sh", " ls"} {
		if !strings.Contains(bin, want) {
			t.Errorf("/bin lacks %q:\n%s", want, bin)
		}
	}
	if usr := debugfsRun(t, debugfs, out, "ls /usr/bin"); !strings.Contains(usr, "env") {
		t.Errorf("/usr/bin lacks env (shebangs need /usr/bin/env):\n%s", usr)
	}
	sh := debugfsRun(t, debugfs, out, "stat /bin/sh")
	if !strings.Contains(sh, `"/bin/busybox"`) || !strings.Contains(sh, "Type: symlink") {
		t.Errorf("/bin/sh is not a link to /bin/busybox:\n%s", sh)
	}
	for req, want := range map[string]string{
		"stat /sbin/ember-agent": "Mode:  0755",
		"stat /bin/busybox":      "Mode:  0755",
		"stat /tmp":              "Mode:  01777",
		"stat /root":             "Mode:  0700",
	} {
		got := debugfsRun(t, debugfs, out, req)
		if !strings.Contains(got, want) {
			t.Errorf("%s: want %q in\n%s", req, want, got)
		}
		if !strings.Contains(got, "User:     0   Group:     0") {
			t.Errorf("%s: not owned by root:\n%s", req, got)
		}
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "var", "home", "mnt"} {
		if got := debugfsRun(t, debugfs, out, "stat /"+d); !strings.Contains(got, "Type: directory") {
			t.Errorf("/%s is not a folder:\n%s", d, got)
		}
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("build left extra files: %v", ents)
	}
}

func TestBuildTinyFailureLeavesNothing(t *testing.T) {
	busybox, _ := needTools(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "tiny.ext4")
	// 1 MiB cannot hold busybox, so mkfs.ext4 fails after creating its file.
	agent := filepath.Join(dir, "agent")
	os.WriteFile(agent, []byte("a"), 0o755)
	if err := BuildTiny(context.Background(), agent, busybox, out, 1); err == nil {
		t.Fatal("1 MiB tiny image built")
	}
	if err := BuildTiny(context.Background(), filepath.Join(dir, "missing"), busybox, out, 0); err == nil {
		t.Fatal("built without an agent")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := BuildTiny(ctx, agent, busybox, out, 0); err == nil {
		t.Fatal("cancelled build succeeded")
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != "agent" {
		t.Fatalf("failed builds left files: %v", ents)
	}
}

func TestStaticCheck(t *testing.T) {
	bb, err := FindBusybox()
	if err != nil {
		t.Skipf("no static busybox: %v", err)
	}
	if err := hosttools.CheckStatic(bb); err != nil {
		t.Fatal(err)
	}
	// A dynamically linked system binary must be refused.
	for _, dyn := range []string{"/bin/ls", "/usr/bin/ls", "/bin/cat"} {
		if _, err := os.Stat(dyn); err != nil {
			continue
		}
		if err := hosttools.CheckStatic(dyn); err == nil {
			t.Skipf("%s is static here", dyn)
		} else if !strings.Contains(err.Error(), "dynamically linked") {
			t.Fatalf("%s: %v", dyn, err)
		}
		if err := BuildTiny(context.Background(), dyn, dyn, filepath.Join(t.TempDir(), "x"), 0); err == nil {
			t.Fatal("built tiny image with a dynamic busybox")
		}
		return
	}
	t.Skip("no dynamically linked binary found to test with")
}

func TestInfoFormats(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "q")
	os.WriteFile(q, append([]byte("QFI\xfb"), make([]byte, 100)...), 0o644)
	if fi, err := Info(q); err != nil || fi.Format != FormatQCOW2 {
		t.Fatalf("qcow2: %+v %v", fi, err)
	}
	r := filepath.Join(dir, "r")
	os.WriteFile(r, make([]byte, 4096), 0o644)
	if fi, err := Info(r); err != nil || fi.Format != FormatRaw || fi.ApparentBytes != 4096 {
		t.Fatalf("raw: %+v %v", fi, err)
	}
	if _, err := Info(filepath.Join(dir, "none")); err == nil {
		t.Fatal("missing file has info")
	}
}
