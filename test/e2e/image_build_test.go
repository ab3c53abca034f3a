package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/oci/ocitest"
	"github.com/emberhq/ember/internal/wire"
)

// buildContext writes a recipe and files into a new context folder.
func buildContext(t *testing.T, recipe string, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Emberfile"), []byte(recipe), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if strings.HasSuffix(name, ".sh") {
			mode = 0o750
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func (e *env) images() map[string]wire.Image {
	e.t.Helper()
	var imgs []wire.Image
	if err := json.Unmarshal([]byte(e.must("image", "ls", "--json")), &imgs); err != nil {
		e.t.Fatal(err)
	}
	m := map[string]wire.Image{}
	for _, img := range imgs {
		m[img.Name] = img
	}
	return m
}

// noBuildLeftovers checks that no build VM, build folder or stray image
// file is left.
func (e *env) noBuildLeftovers(wantImages ...string) {
	e.t.Helper()
	if out := e.must("ls", "-q"); strings.TrimSpace(out) != "" {
		for _, name := range strings.Fields(out) {
			if strings.HasPrefix(name, "build-") {
				e.t.Fatalf("a build vm is left: %s", out)
			}
		}
	}
	builds, _ := os.ReadDir(filepath.Join(e.home, "state", "images", "builds"))
	if len(builds) != 0 {
		e.t.Fatalf("build folders left: %v", builds)
	}
	vms, _ := os.ReadDir(filepath.Join(e.home, "state", "vms"))
	for _, d := range vms {
		if _, err := os.Stat(filepath.Join(e.home, "state", "vms", d.Name(), "disk.qcow2")); err == nil && !e.hasVMID(d.Name()) {
			e.t.Fatalf("vm folder %s left", d.Name())
		}
	}
	imgs := e.images()
	files, _ := filepath.Glob(filepath.Join(e.home, "state", "images", "*.raw"))
	if len(files) != len(wantImages) {
		e.t.Fatalf("image files %v, want one for each of %v", files, wantImages)
	}
	for _, name := range wantImages {
		if _, ok := imgs[name]; !ok {
			e.t.Fatalf("image %s not registered: %v", name, imgs)
		}
	}
}

func (e *env) hasVMID(id string) bool {
	var vms []wire.VM
	_ = json.Unmarshal([]byte(e.must("ls", "--json")), &vms)
	for _, vm := range vms {
		if vm.ID == id {
			return true
		}
	}
	return false
}

// TestImageBuild: a recipe FROM tiny with RUN, COPY, ENV and WORKDIR
// builds an image whose VMs have the files; the config is recorded; an
// unchanged rebuild takes every step from the cache and boots no VM.
func TestImageBuild(t *testing.T) {
	e := newEnv(t)
	recipe := "# a test image\n" +
		"FROM tiny\n" +
		"ENV GREETING=\"hello world\"\n" +
		"RUN echo \"$GREETING from run\" > /built.txt && \\\n" +
		"    echo step output line\n" +
		"WORKDIR /srv/app\n" +
		"COPY app.conf run.sh ./\n" +
		"COPY conf /etc/conf\n" +
		"RUN [\"/bin/sh\", \"-c\", \"pwd > /workdir.txt\"]\n"
	dir := buildContext(t, recipe, map[string]string{
		"app.conf": "key = value\n", "run.sh": "#!/bin/sh\necho ran\n",
		"conf/a.txt": "A\n", "conf/sub/b.txt": "B\n", "unused.txt": "not sent\n",
	})
	out, errOut, code := e.run("image", "build", "--context", dir, "app")
	if code != 0 {
		t.Fatalf("build: exit %d\n%s\n%s", code, out, errOut)
	}
	if strings.TrimSpace(out) != "app" {
		t.Fatalf("build printed %q, want the image name", out)
	}
	for _, want := range []string{"step 2/6: RUN echo", "step output line", "step 4/6: COPY app.conf run.sh ./"} {
		if !strings.Contains(errOut, want) {
			t.Fatalf("build output lacks %q:\n%s", want, errOut)
		}
	}
	img := e.images()["app"]
	if img.Kind != "built" || img.Parent != "tiny" || !strings.HasPrefix(img.RecipeDigest, "sha256:") || img.Format != "raw" {
		t.Fatalf("image record: %+v", img)
	}
	if img.Config == nil || img.Config.WorkingDir != "/srv/app" || len(img.Config.Env) != 1 || img.Config.Env[0] != "GREETING=hello world" {
		t.Fatalf("image config: %+v", img.Config)
	}
	e.noBuildLeftovers("app")

	e.must("create", "vm1", "--image", "app")
	checks := map[string]string{
		"cat /built.txt":                          "hello world from run\n",
		"cat /srv/app/app.conf":                   "key = value\n",
		"/srv/app/run.sh":                         "ran\n",
		"stat -c %a /srv/app/run.sh":              "750\n",
		"cat /etc/conf/a.txt /etc/conf/sub/b.txt": "A\nB\n",
		"cat /workdir.txt":                        "/srv/app\n",
		"ls /srv/app":                             "app.conf\nrun.sh\n",
	}
	for cmd, want := range checks {
		if got := e.must("exec", "vm1", "--", "sh", "-c", cmd); got != want {
			t.Errorf("%s: got %q, want %q", cmd, got, want)
		}
	}

	// The image's ENV and WORKDIR apply to exec and sessions in its VMs.
	if got := e.must("exec", "vm1", "--", "sh", "-c", `echo "$GREETING|$(pwd)"`); got != "hello world|/srv/app\n" {
		t.Errorf("exec env and folder: %q", got)
	}
	e.must("session", "new", "vm1", "s")
	if out := e.must("session", "run", "vm1", "s", "--", `echo "$GREETING|$(pwd)"`); !strings.Contains(out, "hello world|/srv/app") {
		t.Errorf("session env and folder: %q", out)
	}

	// The same recipe again, under another name: every step cached.
	out, errOut, code = e.run("image", "build", "--context", dir, "app2")
	if code != 0 {
		t.Fatalf("rebuild: exit %d\n%s\n%s", code, out, errOut)
	}
	if n := strings.Count(errOut, "  cached"); n != 4 {
		t.Fatalf("rebuild: %d steps cached, want the 4 RUN and COPY steps:\n%s", n, errOut)
	}
	if !strings.Contains(errOut, "built image app2: 0 steps ran in a build VM, 4 came from the cache") || strings.Contains(errOut, "booting") {
		t.Fatalf("rebuild booted a vm:\n%s", errOut)
	}
	e.noBuildLeftovers("app", "app2")
}

// waitBuildLog waits until build operation id's log has a line holding
// want (the guest printed it: the step runs).
func (e *env) waitBuildLog(id, want string) {
	e.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var op wire.Operation
		if err := json.Unmarshal([]byte(e.must("op", "status", id)), &op); err != nil {
			e.t.Fatal(err)
		}
		for _, line := range op.Log {
			if strings.Contains(line, want) {
				return
			}
		}
		if op.Done() || time.Now().After(deadline) {
			e.t.Fatalf("build %s never logged %q: %+v", id, want, op)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// slowRecipe's RUN step says "step 2 waits", then waits until the test
// makes /tmp/release in its build VM, so the test, not a timer, decides
// when the step ends.
const slowRecipe = "FROM tiny\n" +
	"RUN echo step $((1+1)) waits; while [ ! -e /tmp/release ]; do sleep 0.1; done; echo released > /released\n"

// TestImageBuildDoesNotBlockCreate: while a build's step runs, a create
// from another image completes, and the build finishes only after it.
func TestImageBuildDoesNotBlockCreate(t *testing.T) {
	e := newEnv(t)
	dir := buildContext(t, slowRecipe, nil)
	id := strings.TrimSpace(e.must("image", "build", "-d", "--context", dir, "slow"))
	e.waitBuildLog(id, "step 2 waits") // the guest's output, not the step's text
	// The build VM is a VM while its step runs, named for its operation.
	if out := e.must("ls", "-q"); !strings.Contains(out, "build-"+id) {
		t.Fatalf("ls during the build: %q", out)
	}
	e.must("create", "during", "--image", "tiny")
	var op wire.Operation
	if err := json.Unmarshal([]byte(e.must("op", "status", id)), &op); err != nil || op.State != wire.OpRunning {
		t.Fatalf("the build is no longer running after the create: %v %+v", err, op)
	}
	e.must("exec", "build-"+id, "--", "touch", "/tmp/release")
	e.must("op", "wait", id)
	e.noBuildLeftovers("slow")
	if out := e.must("ls", "-q"); strings.TrimSpace(out) != "during" {
		t.Fatalf("vms after the build: %q", out)
	}
}

// TestImageBuildCancelMidStep: a build cancelled while its RUN step runs
// leaves no image, VM, QEMU, disk or folder.
func TestImageBuildCancelMidStep(t *testing.T) {
	e := newEnv(t)
	dir := buildContext(t, slowRecipe, nil)
	id := strings.TrimSpace(e.must("image", "build", "-d", "--context", dir, "never"))
	e.waitBuildLog(id, "step 2 waits") // the guest's output, not the step's text
	e.must("op", "cancel", id)
	if _, errOut, code := e.run("op", "wait", id); code == 0 || !strings.Contains(errOut, "build of never was cancelled") {
		t.Fatalf("op wait after cancel: %d %q", code, errOut)
	}
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("qemu left after cancel: %v", pids)
	}
	e.noBuildLeftovers()
	cache, _ := os.ReadDir(filepath.Join(e.home, "state", "images", "cache"))
	if len(cache) != 0 {
		t.Fatalf("a cancelled step was cached: %v", cache)
	}
}

// TestImageBuildFailingRun: a RUN that fails fails the build with its
// status and output; nothing is registered or left.
func TestImageBuildFailingRun(t *testing.T) {
	e := newEnv(t)
	dir := buildContext(t, "FROM tiny\nRUN echo fine > /ok\nRUN echo about to fail; echo on stderr >&2; exit 7\n", nil)
	out, errOut, code := e.run("image", "build", "--context", dir, "broken")
	if code == 0 {
		t.Fatalf("a failing build succeeded: %q", out)
	}
	for _, want := range []string{"Emberfile:3: RUN echo about to fail", "failed with exit status 7", "about to fail\non stderr"} {
		if !strings.Contains(errOut, want) {
			t.Fatalf("build error lacks %q:\n%s", want, errOut)
		}
	}
	if pids := qemuPIDs(e.home); len(pids) != 0 {
		t.Fatalf("qemu left after a failed build: %v", pids)
	}
	e.noBuildLeftovers()
}

// TestImageBuildBadInput: bad recipes, contexts and names are refused
// with an error that says where, and nothing is made.
func TestImageBuildBadInput(t *testing.T) {
	e := newEnv(t)
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, recipe string
		files        map[string]string
		links        map[string]string
		image        string
		want         string
	}{
		{name: "unknown instruction", recipe: "FROM tiny\nRUN true\nRUNN x\n",
			want: `Emberfile:3: unknown instruction "RUNN"`},
		{name: "missing FROM", recipe: "# no from\nRUN true\n", want: "Emberfile:2: RUN before FROM"},
		{name: "empty recipe", recipe: "", want: "Emberfile:1: no FROM"},
		{name: "copy out of the context", recipe: "FROM tiny\nCOPY ../secret /x\n",
			want: "Emberfile:2: COPY ../secret: the source leaves the build context"},
		{name: "symlink out of the context", recipe: "FROM tiny\nCOPY link /x\n",
			links: map[string]string{"link": filepath.Join(outside, "secret")},
			want:  "COPY link: link is a symlink that leads out of the build context"},
		{name: "symlink out, inside a folder", recipe: "FROM tiny\nCOPY conf /etc/conf\n",
			files: map[string]string{"conf/a.txt": "a\n"}, links: map[string]string{"conf/evil": "../../secret"},
			want: "COPY conf: conf/evil is a symlink that leads out of the build context"},
		{name: "missing context file", recipe: "FROM tiny\nCOPY missing.txt /x\n",
			want: "COPY missing.txt: missing.txt is not in the build context"},
		{name: "invalid name", recipe: "FROM tiny\nRUN true\n", image: "Bad_Name",
			want: `image name "Bad_Name" is not valid`},
		{name: "unknown FROM", recipe: "\nFROM nosuch\nRUN true\n", want: "Emberfile:2: FROM nosuch: image not found"},
		{name: "FROM a missing archive", recipe: "FROM ./busybox.tar\nRUN true\n",
			want: "open the FROM archive: open "},
		{name: "FROM a corrupt archive", recipe: "FROM corrupt.tar\nRUN true\n", files: map[string]string{"corrupt.tar": "not a tar"},
			want: "Emberfile:1: FROM corrupt.tar: archive corrupt.tar"},
		{name: "FROM a bad reference", recipe: "FROM Bad:Ref:x\n", want: "Emberfile:1: FROM: \"Bad:Ref:x\" is not an image reference"},
	}
	for _, c := range cases {
		dir := buildContext(t, c.recipe, c.files)
		for name, target := range c.links {
			if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
		}
		image := c.image
		if image == "" {
			image = "bad"
		}
		_, errOut, code := e.run("image", "build", "--context", dir, image)
		if code == 0 || !strings.Contains(errOut, c.want) {
			t.Errorf("%s: exit %d, stderr %q; want an error with %q", c.name, code, errOut, c.want)
		}
	}
	e.noBuildLeftovers()
	for name, img := range e.images() {
		if img.Kind != "builtin" {
			t.Fatalf("image %s after bad builds: %+v", name, img)
		}
	}
}

// TestImageBuildPackages: PACKAGES installs Debian packages fetched by
// the host (the guest has no network); an image without dpkg gets a clear
// error. With the built-in debian: the recipe, end to end.
func TestImageBuildPackages(t *testing.T) {
	e := newEnv(t)
	dir := buildContext(t, "FROM tiny\nPACKAGES jq\n", nil)
	if _, errOut, code := e.run("image", "build", "--context", dir, "nopkg"); code == 0 ||
		!strings.Contains(errOut, "Emberfile:2: PACKAGES needs a Debian-based image (FROM debian, or one built on it): tiny has no /var/lib/dpkg/status") {
		t.Fatalf("PACKAGES on tiny: exit %d, %q", code, errOut)
	}
	e.noBuildLeftovers()
	if _, _, code := e.run("image", "inspect", "debian"); code != 0 {
		t.Skip("skipping FROM debian: this ember has no built-in debian image")
	}
	recipe := "FROM debian\n" +
		"PACKAGES jq\n" +
		"ENV GREETING=\"hi there\"\n" +
		"RUN echo '{\"a\": 41}' | jq '.a + 1' > /answer.txt\n" +
		"COPY hello.txt /opt/hello.txt\n"
	dir = buildContext(t, recipe, map[string]string{"hello.txt": "hello\n"})
	if out, errOut, code := e.run("image", "build", "--context", dir, "withjq"); code != 0 {
		t.Fatalf("build: exit %d\n%s\n%s", code, out, errOut)
	}
	e.must("create", "j1", "--image", "withjq")
	for cmd, want := range map[string]string{
		"jq --version | cut -c1-3":                        "jq-\n",
		"cat /answer.txt":                                 "42\n",
		"cat /opt/hello.txt":                              "hello\n",
		`echo "$GREETING"`:                                "hi there\n",
		"test -e /var/cache/ember-packages || echo clean": "clean\n",
	} {
		if got := e.must("exec", "j1", "--", "sh", "-c", cmd); got != want {
			t.Errorf("%s: %q, want %q", cmd, got, want)
		}
	}
	e.must("session", "new", "j1", "s")
	if out := e.must("session", "run", "j1", "s", "--", `echo "$GREETING"`); !strings.Contains(out, "hi there") {
		t.Errorf("session: %q", out)
	}
}

// TestImageBuildFromRegistry: FROM a reference served by an in-process
// registry on loopback: the build starts from the pulled image, keeps its
// config (Env, WorkingDir, User) under the recipe's, RUN runs as its
// user; a rebuild takes the pulled base and every step from the cache,
// and so does FROM the same image as an OCI archive in the context.
func TestImageBuildFromRegistry(t *testing.T) {
	img, ref := busyboxInRegistry(t)
	e := newEnv(t)
	recipe := "FROM " + ref + "\n" +
		"ENV STAGE=built\n" +
		"RUN echo \"$GREETING $STAGE $(id -u) $(pwd)\" > /work/from-run.txt\n" +
		"COPY note.txt /data/note.txt\n"
	dir := buildContext(t, recipe, map[string]string{"note.txt": "note\n"})
	if out, errOut, code := e.run("image", "build", "--context", dir, "onbusybox"); code != 0 {
		t.Fatalf("build: exit %d\n%s\n%s", code, out, errOut)
	}
	got := e.images()["onbusybox"]
	if got.Kind != "built" || got.Parent != "" || got.Config == nil || got.Config.User != "app" || got.Config.WorkingDir != "/work" ||
		strings.Join(got.Config.Env, " ") != strings.Join(append(append([]string(nil), ocitest.Config.Env...), "STAGE=built"), " ") {
		t.Fatalf("image: %+v %+v", got, got.Config)
	}
	e.must("create", "ob", "--image", "onbusybox")
	if out := e.must("exec", "ob", "--", "cat", "/work/from-run.txt", "/data/note.txt", "/data/keep.txt"); out != "hello from oci built 1000 /work\nnote\nkeep\n" {
		t.Fatalf("files: %q", out)
	}
	out, errOut, code := e.run("image", "build", "--context", dir, "onbusybox2")
	if code != 0 || strings.Count(errOut, "  cached") != 2 || !strings.Contains(errOut, ": 0 steps ran in a build VM, 2 came from the cache") {
		t.Fatalf("rebuild: exit %d\n%s\n%s", code, out, errOut)
	}
	// The same image from an archive in the context (passed by the CLI as
	// a descriptor): the same digest, so the same base and cached steps.
	if err := ocitest.WriteOCIArchive(img, filepath.Join(dir, "busybox.tar")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Emberfile"), []byte(strings.Replace(recipe, ref, "busybox.tar", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = e.run("image", "build", "--context", dir, "fromarchive")
	if code != 0 || !strings.Contains(errOut, ": 0 steps ran in a build VM, 2 came from the cache") {
		t.Fatalf("build FROM an archive: exit %d\n%s", code, errOut)
	}
	e.must("create", "oa", "--image", "fromarchive")
	if out := e.must("exec", "oa", "--", "cat", "/work/from-run.txt"); out != "hello from oci built 1000 /work\n" {
		t.Fatalf("FROM an archive: %q", out)
	}
	e.noBuildLeftovers("onbusybox", "onbusybox2", "fromarchive")
}
