package e2e

import (
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/emberhq/ember/internal/hosttools"
	"github.com/emberhq/ember/internal/oci/ocitest"
	"github.com/emberhq/ember/internal/wire"
)

// busyboxInRegistry serves ocitest.Busybox from go-containerregistry's
// in-process registry on loopback until the test ends, and returns it and
// its reference (127.0.0.1:PORT/e2e/busybox:v1).
func busyboxInRegistry(t *testing.T) (v1.Image, string) {
	t.Helper()
	bb, err := hosttools.Find("busybox")
	if err != nil {
		t.Fatalf("%v (make deps-test installs busybox-static)", err)
	}
	img, err := ocitest.Busybox(bb)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	ref := strings.TrimPrefix(srv.URL, "http://") + "/e2e/busybox:v1"
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	return img, ref
}

// issue 9, import: an OCI archive the test writes (the host's static
// busybox in its first layer, a whiteout of a file and of a folder and an
// opaque folder in its second, ENV, WorkingDir and User in its config)
// and the same image pushed to go-containerregistry's in-process registry
// on loopback are each imported; a VM boots from each (the image has no
// init and no sshd: the agent is its init), exec works, the whited-out
// files are gone, the opaque folder lost its lower contents, and exec and
// a session start with the image's Env, WorkingDir and User. Bad input
// (a corrupt archive, a missing file, an unknown reference, a bad name,
// a taken name) is refused with a clear error and keeps nothing.
func TestImageImport(t *testing.T) {
	img, ref := busyboxInRegistry(t)
	host, _, _ := strings.Cut(ref, "/") // 127.0.0.1:PORT
	tmp := t.TempDir()
	archive := filepath.Join(tmp, "busybox-oci.tar")
	if err := ocitest.WriteOCIArchive(img, archive); err != nil {
		t.Fatal(err)
	}

	e := newEnv(t)
	for _, c := range []struct{ source, image, vm string }{{archive, "from-archive", "va"}, {ref, "from-registry", "vr"}} {
		var got wire.Image
		if c.vm == "va" {
			if err := json.Unmarshal([]byte(e.must("image", "import", "--json", c.source, c.image)), &got); err != nil {
				t.Fatal(err)
			}
		} else {
			// An operation like a build: started detached, then followed.
			id := strings.TrimSpace(e.must("image", "import", "--detach", c.source, c.image))
			e.must("op", "wait", id)
			var imgs []wire.Image
			if err := json.Unmarshal([]byte(e.must("image", "inspect", c.image)), &imgs); err != nil || len(imgs) != 1 {
				t.Fatalf("inspect: %v", err)
			}
			got = imgs[0]
		}
		if got.Kind != "imported" || got.Parent != "" || got.Config == nil || got.Config.WorkingDir != "/work" || got.Config.User != "app" {
			t.Fatalf("%s: %+v", c.image, got)
		}
		e.must("create", c.vm, "--image", c.image)
		if out := e.must("exec", c.vm, "--", "cat", "/data/keep.txt", "/data/opaque/upper.txt", "/data/late.txt"); out != "keep\nupper\nlate\n" {
			t.Errorf("%s: kept files: %q", c.vm, out)
		}
		for _, gone := range []string{"/data/gone.txt", "/data/gonedir", "/data/opaque/lower.txt"} {
			if _, _, code := e.run("exec", c.vm, "--", "test", "-e", gone); code != 1 {
				t.Errorf("%s: %s: test -e exit %d, want 1 (gone)", c.vm, gone, code)
			}
		}
		// Exec starts with the image's config; its own flags win.
		if out := e.must("exec", c.vm, "--", "sh", "-c", `echo "$GREETING|$(pwd)|$(id -u)|$PATH"`); out != "hello from oci|/work|1000|/usr/local/bin:/usr/bin:/bin\n" {
			t.Errorf("%s: exec with the image's config: %q", c.vm, out)
		}
		if out := e.must("exec", "-u", "root", "-w", "/data", "-e", "GREETING=own", c.vm, "--", "sh", "-c", `echo "$GREETING|$(pwd)|$(id -u)"`); out != "own|/data|0\n" {
			t.Errorf("%s: exec with its own -u -w -e: %q", c.vm, out)
		}
		// So does a session (the login shell as app, in /work).
		e.must("session", "new", c.vm, "s")
		if out := e.must("session", "run", c.vm, "s", "--", `echo "$GREETING|$(pwd)|$(id -u)"`); !strings.Contains(out, "hello from oci|/work|1000") {
			t.Errorf("%s: session: %q", c.vm, out)
		}
	}

	imagesDir := filepath.Join(e.home, "state", "images")
	before, _ := os.ReadDir(imagesDir)
	junk := filepath.Join(tmp, "corrupt.tar")
	good, _ := os.ReadFile(archive)
	os.WriteFile(junk, good[:len(good)/3], 0o644) // cut in the middle of a blob
	for _, c := range []struct{ args []string }{
		{[]string{"image", "import", junk, "corrupt"}},
		{[]string{"image", "import", filepath.Join(tmp, "missing.tar"), "missing"}},
		{[]string{"image", "import", host + "/e2e/nothing:v1", "unknown"}},
		{[]string{"image", "import", archive, "Bad_Name"}},
		{[]string{"image", "import", archive, "from-registry"}},
	} {
		_, stderr, code := e.run(c.args...)
		if code == 0 {
			t.Errorf("%v succeeded", c.args)
		}
		t.Logf("%v: exit %d: %s", c.args[2:], code, strings.TrimSpace(stderr))
		want := map[string]string{"corrupt": "archive", "missing": "no such file", "unknown": "no such image",
			"Bad_Name": "image name", "from-registry": "already exists"}[c.args[3]]
		if !strings.Contains(stderr, want) {
			t.Errorf("%v: stderr %q, want %q", c.args, stderr, want)
		}
	}
	after, _ := os.ReadDir(imagesDir)
	if len(after) != len(before) {
		t.Errorf("bad imports left files: %v, before %v", names(after), names(before))
	}
	var imgs []wire.Image
	if err := json.Unmarshal([]byte(e.must("image", "ls", "--json")), &imgs); err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, i := range imgs {
		listed = append(listed, i.Name)
	}
	if strings.Join(listed, ",") != "tiny,debian,from-archive,from-registry" {
		t.Errorf("images after the bad imports: %v", listed)
	}

	// An imported image goes like any other: refused while a VM uses it,
	// then removed with its file.
	if _, stderr, code := e.run("image", "rm", "from-archive"); code == 0 || !strings.Contains(stderr, "va") {
		t.Errorf("image rm of an image in use: exit %d, %q", code, stderr)
	}
	var fa []wire.Image
	if err := json.Unmarshal([]byte(e.must("image", "inspect", "from-archive")), &fa); err != nil || len(fa) != 1 {
		t.Fatalf("inspect: %v %+v", err, fa)
	}
	e.must("rm", "-f", "va")
	e.must("image", "rm", "from-archive")
	if _, err := os.Stat(fa[0].Path); !os.IsNotExist(err) {
		t.Errorf("the removed image's file %s: %v", fa[0].Path, err)
	}
}

func names(es []os.DirEntry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}
