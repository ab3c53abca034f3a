package daemon

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/recipe"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

type tarEntry struct {
	name string
	typ  byte
	mode int64
	body string
	link string
}

func tarOf(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestReceiveContext(t *testing.T) {
	dir := t.TempDir()
	good := tarOf(t,
		tarEntry{name: "conf/", typ: tar.TypeDir, mode: 0o750},
		tarEntry{name: "conf/a.txt", typ: tar.TypeReg, mode: 0o640, body: "A"},
		tarEntry{name: "run.sh", typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\n"},
		tarEntry{name: "deep/er/x", typ: tar.TypeReg, mode: 0o600, body: "x"},
		// A read-only folder gets its mode once its files are in (a
		// daemon that is not root could not write them otherwise).
		tarEntry{name: "ro/", typ: tar.TypeDir, mode: 0o555},
		tarEntry{name: "ro/f", typ: tar.TypeReg, mode: 0o444, body: "f"},
	)
	if err := receiveContext(bytes.NewReader(good), dir); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"conf": 0o750, "conf/a.txt": 0o640, "run.sh": 0o755, "deep/er/x": 0o600, "ro": 0o555, "ro/f": 0o444} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", name, err, fi.Mode().Perm(), mode)
		}
	}
	d1, err := contextDigest(dir, []string{"conf", "run.sh"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "run.sh"), 0o700); err != nil {
		t.Fatal(err)
	}
	d2, _ := contextDigest(dir, []string{"conf", "run.sh"})
	if d2 == d1 {
		t.Error("a mode change leaves the COPY digest as it was")
	}
	if _, err := contextDigest(dir, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "COPY nope: not in the build context") {
		t.Errorf("missing source: %v", err)
	}

	outside := t.TempDir()
	for name, archive := range map[string][]byte{
		"dot-dot":       tarOf(t, tarEntry{name: "../escape", typ: tar.TypeReg, mode: 0o644, body: "x"}),
		"absolute":      tarOf(t, tarEntry{name: filepath.Join(outside, "abs"), typ: tar.TypeReg, mode: 0o644, body: "x"}),
		"symlink":       tarOf(t, tarEntry{name: "link", typ: tar.TypeSymlink, link: outside}),
		"hard link":     tarOf(t, tarEntry{name: "hard", typ: tar.TypeLink, link: "/etc/passwd"}),
		"device":        tarOf(t, tarEntry{name: "dev", typ: tar.TypeChar}),
		"twice":         tarOf(t, tarEntry{name: "a", typ: tar.TypeReg, body: "1"}, tarEntry{name: "a", typ: tar.TypeReg, body: "2"}),
		"not tar":       []byte("this is not a tar archive at all, but it is long enough to be read as a header block......" + strings.Repeat("x", 600)),
		"the root":      tarOf(t, tarEntry{name: "./", typ: tar.TypeDir, mode: 0o777}),
		"nested dotdot": tarOf(t, tarEntry{name: "a/../../b", typ: tar.TypeReg, body: "x"}),
		"trailer":       append(tarOf(t, tarEntry{name: "a", typ: tar.TypeReg, body: "1"}), make([]byte, maxContextTrailer+1024)...),
	} {
		d := t.TempDir()
		err := receiveContext(bytes.NewReader(archive), d)
		if err == nil || wire.CodeOf(err) != wire.CodeInvalid {
			t.Errorf("%s: %v, want invalid", name, err)
		}
	}
	if entries, _ := os.ReadDir(outside); len(entries) != 0 {
		t.Fatalf("a hostile context wrote outside its folder: %v", entries)
	}
}

func TestFrameReaderTakesInputFramesOnly(t *testing.T) {
	var buf bytes.Buffer
	wire.WriteFrame(&buf, wire.FrameStdin, []byte("abc"))
	wire.WriteFrame(&buf, wire.FrameStdin, []byte("de"))
	wire.WriteFrame(&buf, wire.FrameStdinEOF, nil)
	wire.WriteFrame(&buf, wire.FrameStdin, []byte("after the end"))
	b := make([]byte, 100)
	r := &frameReader{r: &buf}
	var got []byte
	for {
		n, err := r.Read(b)
		got = append(got, b[:n]...)
		if err != nil {
			break
		}
	}
	if string(got) != "abcde" {
		t.Fatalf("read %q", got)
	}
	buf.Reset()
	wire.WriteFrame(&buf, wire.FrameResize, []byte("{}"))
	if _, err := (&frameReader{r: &buf}).Read(b); err == nil || wire.CodeOf(err) != wire.CodeInvalid {
		t.Fatalf("another frame: %v", err)
	}
}

func TestBuildLogBoundsAndFollowers(t *testing.T) {
	op := &imageBuildOp{opState: newOpState(context.Background(), "b1", wire.ImageBuild.Name, "img", nil)}
	op.logf("step 1/1: RUN x")
	op.Write([]byte("partial"))
	op.Write([]byte(" line\r\nnext\n" + strings.Repeat("y", buildLogLineLen+10) + "\n"))
	s := op.Snapshot()
	want := []string{"step 1/1: RUN x", "partial line", "next", strings.Repeat("y", buildLogLineLen), "yyyyyyyyyy"}
	if strings.Join(s.Log, "|") != strings.Join(want, "|") || s.LogStart != 0 {
		t.Fatalf("log %q from %d", s.Log, s.LogStart)
	}
	// A follower gets each line once.
	sent := 0
	first := newLogLines(s, &sent)
	op.logf("more")
	second := newLogLines(op.Snapshot(), &sent)
	if len(first.Log) != 5 || len(second.Log) != 1 || second.Log[0] != "more" || second.LogStart != 5 || sent != 6 {
		t.Fatalf("follower: %q then %q from %d, sent %d", first.Log, second.Log, second.LogStart, sent)
	}
	for i := 0; i < buildLogLines+50; i++ {
		op.Write([]byte("line\n"))
	}
	s = op.Snapshot()
	if len(s.Log) != buildLogLines || s.LogStart != 6+50 {
		t.Fatalf("bounded log: %d lines from %d", len(s.Log), s.LogStart)
	}
	third := newLogLines(s, &sent)
	if third.LogStart != 56 || len(third.Log) != buildLogLines || sent != 56+buildLogLines {
		t.Fatalf("a follower that fell behind: from %d, %d lines, sent %d", third.LogStart, len(third.Log), sent)
	}
	if tail := op.tail(0, 2); tail != "line\nline" {
		t.Fatalf("tail %q", tail)
	}
}

func TestBuildStateKeys(t *testing.T) {
	r, err := recipe.Parse("R", []byte("FROM tiny\nENV A=1 B=2\nENV A=3\nWORKDIR /x\n"))
	if err != nil {
		t.Fatal(err)
	}
	st := buildState{env: []string{"PATH=/bin", "A=0"}, key: "image p1"}
	st.setEnv(r.Steps[0].Env)
	st.setEnv(r.Steps[1].Env)
	if strings.Join(st.env, " ") != "PATH=/bin B=2 A=3" {
		t.Fatalf("env %q", st.env)
	}
	if m := st.envMap(); m["A"] != "3" || m["B"] != "2" || len(m) != 3 {
		t.Fatalf("env map %v", m)
	}
	a := buildState{key: "image p1"}
	b := buildState{key: "image p2"}
	a.chain("RUN x", "")
	b.chain("RUN x", "")
	c := buildState{key: "image p1"}
	c.chain("RUN x", "A=1")
	again := buildState{key: "image p1"}
	again.chain("RUN x", "")
	if a.key == b.key || a.key == c.key || a.key != again.key || len(a.key) != 64 {
		t.Fatalf("keys: %s %s %s %s", a.key, b.key, c.key, again.key)
	}
	// Parts are delimited: moving text between them changes the key.
	d, e := buildState{}, buildState{}
	d.chain("ab", "c")
	e.chain("a", "bc")
	if d.key == e.key {
		t.Fatal("parts run together in the key")
	}
}

// buildTestDaemon is a daemon on fakes with an image "base" to build on.
func buildTestDaemon(t *testing.T, home string) (*testDaemon, *client.Client) {
	t.Helper()
	td := openTestDaemon(t, home, newFakeDriver())
	base := filepath.Join(t.TempDir(), "base.raw")
	if err := os.WriteFile(base, []byte("base image"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := td.store.PutImage(context.Background(), store.Image{Name: "base", Kind: store.ImageRegistered,
		Path: base, Format: store.FormatRaw, SizeBytes: 1 << 30,
		Config: store.ImageConfig{Env: []string{"FROM_BASE=1"}, WorkingDir: "/", User: "app"}}); err != nil {
		t.Fatal(err)
	}
	return td, serve(t, td)
}

// build starts a build of recipe (no context files) and waits for it.
func build(t *testing.T, c *client.Client, name, recipeText string) (wire.Operation, error) {
	t.Helper()
	op, err := client.BuildImage(context.Background(), c, wire.ImageBuildParams{Name: name, File: "R", Recipe: recipeText}, "", nil, "")
	if err != nil {
		return op, err
	}
	waitFor(t, c, op.ID)
	// The whole log, as op status has it (a follower gets each line once).
	var st wire.Operation
	err = c.Call(context.Background(), "op.status", wire.OpParams{ID: op.ID}, &st)
	return st, err
}

// assertNoBuildLeft: no VM, VM folder, process or build folder is left.
func assertNoBuildLeft(t *testing.T, td *testDaemon) {
	t.Helper()
	assertNothingLeft(t, td)
	if entries, _ := os.ReadDir(filepath.Join(td.layout.ImagesDir(), buildsDir)); len(entries) != 0 {
		t.Fatalf("build folders left: %v", entries)
	}
}

func logHas(op wire.Operation, s string) bool {
	for _, l := range op.Log {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

func TestBuildOnFakes(t *testing.T) {
	td, c := buildTestDaemon(t, "")
	op, err := build(t, c, "img", "FROM base\nENV A=1\nRUN [\"showreq\"]\nRUN echo hi\n")
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("build: %v %+v", err, op)
	}
	// The step ran with the config so far, as the base image's user.
	if !logHas(op, "dir=/ user=app env=A=1,FROM_BASE=1") || !logHas(op, "ran: /bin/sh -c echo hi") {
		t.Fatalf("log: %q", op.Log)
	}
	var ops []wire.Operation
	if err := c.Call(context.Background(), "op.list", nil, &ops); err != nil || len(ops) != 1 || ops[0].Log != nil {
		t.Fatalf("op list carries no log: %v %+v", err, ops)
	}
	img, err := td.store.GetImage(context.Background(), "img")
	if err != nil || img.Kind != store.ImageBuilt || img.Parent != "base" || img.Config.WorkingDir != "/" ||
		strings.Join(img.Config.Env, " ") != "FROM_BASE=1 A=1" || img.Config.User != "app" || !strings.HasPrefix(img.RecipeDigest, "sha256:") {
		t.Fatalf("image: %v %+v", err, img)
	}
	assertNoBuildLeft(t, td)

	td.drv.mu.Lock()
	started := td.drv.nextPID
	td.drv.mu.Unlock()
	op, err = build(t, c, "img2", "# the same steps\nFROM base\nENV A=1\nRUN [\"showreq\"]\nRUN echo hi\n")
	if err != nil || op.State != wire.OpSucceeded || !logHas(op, ": 0 steps ran in a build VM, 2 came from the cache") {
		t.Fatalf("rebuild: %v %+v", err, op)
	}
	td.drv.mu.Lock()
	if td.drv.nextPID != started {
		t.Errorf("an unchanged rebuild started %d VMs", td.drv.nextPID-started)
	}
	td.drv.mu.Unlock()
	// A changed ENV changes every later step's key.
	op, err = build(t, c, "img3", "FROM base\nENV A=2\nRUN [\"showreq\"]\nRUN echo hi\n")
	if err != nil || op.State != wire.OpSucceeded || !logHas(op, ": 2 steps ran in a build VM, 0 came from the cache") {
		t.Fatalf("changed build: %v %+v", err, op)
	}
	// --no-cache runs every step again.
	nc, err := client.BuildImage(context.Background(), c, wire.ImageBuildParams{Name: "img4", File: "R",
		Recipe: "FROM base\nENV A=2\nRUN [\"showreq\"]\nRUN echo hi\n", NoCache: true}, "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, c, nc.ID)
	if err := c.Call(context.Background(), "op.status", wire.OpParams{ID: nc.ID}, &op); err != nil || op.State != wire.OpSucceeded || !logHas(op, ": 2 steps ran in a build VM, 0 came from the cache") {
		t.Fatalf("--no-cache: %v %+v", err, op)
	}
	// A name that exists is refused before anything is made.
	if _, err := build(t, c, "img", "FROM base\n"); wire.CodeOf(err) != wire.CodeConflict {
		t.Fatalf("taken name: %v", err)
	}
	assertNoBuildLeft(t, td)
}

func TestBuildFailureAndCancelLeaveNothing(t *testing.T) {
	td, c := buildTestDaemon(t, "")
	op, err := build(t, c, "bad", "FROM base\nRUN [\"exit\", \"3\"]\n")
	if err != nil || op.State != wire.OpFailed || op.ErrorCode != wire.CodeInvalid ||
		!strings.Contains(op.Error, "R:2: RUN [\"exit\", \"3\"] failed with exit status 3") {
		t.Fatalf("failing step: %v %+v", err, op)
	}
	assertNoBuildLeft(t, td)

	started, err := client.BuildImage(context.Background(), c, wire.ImageBuildParams{Name: "held", File: "R", Recipe: "FROM base\nRUN [\"hold\"]\n"}, "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		var st wire.Operation
		if err := c.Call(context.Background(), "op.status", wire.OpParams{ID: started.ID}, &st); err != nil {
			t.Fatal(err)
		}
		if st.Progress == "step 1/1: running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the step never ran: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.Call(context.Background(), "op.cancel", wire.OpParams{ID: started.ID}, nil); err != nil {
		t.Fatal(err)
	}
	if op := waitFor(t, c, started.ID); op.State != wire.OpCancelled {
		t.Fatalf("cancelled build: %+v", op)
	}
	assertNoBuildLeft(t, td)

	// A failure at each step of the build VM's boot leaves nothing.
	for _, step := range []string{"reserve network", "create disk", "start process", "connect to agent", "record running"} {
		td.vms.fault = func(s string) error {
			if s == step {
				return errors.New("injected")
			}
			return nil
		}
		op, err := build(t, c, "f", "FROM base\nRUN true\n")
		if err != nil || op.State != wire.OpFailed || !strings.Contains(op.Error, "injected") {
			t.Fatalf("fault at %s: %v %+v", step, err, op)
		}
		assertNoBuildLeft(t, td)
	}
	td.vms.fault = nil
	if imgs, _ := td.store.ListImages(context.Background()); len(imgs) != 1 {
		t.Fatalf("images: %+v", imgs)
	}
}

// A daemon that died during a build: at the next start its build VM and
// folder go and its operation is failed.
func TestBuildLeftoversOfACrashGo(t *testing.T) {
	home := t.TempDir()
	td, c := buildTestDaemon(t, home)
	opID := "0123456789ab"
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: buildVMPrefix + opID}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	now := time.Now().UTC()
	if err := td.store.PutOperation(context.Background(), store.Operation{ID: opID, Kind: wire.ImageBuild.Name,
		Target: "img", State: wire.OpRunning, CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	left := filepath.Join(td.layout.ImagesDir(), buildsDir, opID, "context")
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	td.Close()
	td2 := openTestDaemon(t, home, td.drv)
	assertNoBuildLeft(t, td2)
	if o, err := td2.store.GetOperation(context.Background(), opID); err != nil || o.State != wire.OpFailed {
		t.Fatalf("operation: %v %+v", err, o)
	}
}

// A build context is bounded by the free space where builds are kept too
// (a third of it), and the refusal says so.
func TestContextLimitFollowsFreeSpace(t *testing.T) {
	dir := t.TempDir()
	limit, why := contextLimit(dir)
	free, err := freeSpace(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := min(int64(wire.MaxBuildContextBytes), max(free/importSpaceFactor, 1)); limit != want {
		t.Fatalf("limit %d, want %d (free %d)", limit, want, free)
	}
	if limit < wire.MaxBuildContextBytes && !strings.Contains(why, "MiB free where builds are kept") {
		t.Fatalf("why %q", why)
	}
}

// The step cache is pruned when builds end, after image rm and at start:
// entries of images that are gone (and of the names before tags), entries
// unused for buildCacheMaxAge, then the least recently used of the
// entries' own space past the cap; entries an image's file shares count
// nothing and stay.
func TestBuildCachePrune(t *testing.T) {
	td, c := buildTestDaemon(t, "")
	ctx := context.Background()
	if op, err := build(t, c, "img", "FROM base\nRUN echo one\nRUN echo two\n"); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("build: %v %+v", err, op)
	}
	base, err := td.store.GetImage(ctx, "base")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(td.layout.ImagesDir(), buildCacheDir)
	entries := func() []string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(dir, "*.raw"))
		for i := range m {
			m[i] = filepath.Base(m[i])
		}
		return m
	}
	built := entries()
	if len(built) != 2 {
		t.Fatalf("cache after a two-step build: %v", built)
	}
	for _, e := range built {
		if !strings.HasPrefix(e, cacheTag(base)+"-") {
			t.Fatalf("entry %s is not tagged with its FROM image %s", e, cacheTag(base))
		}
	}
	key := strings.Repeat("a", 64)
	write := func(name string, size int, age time.Duration) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte{1}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(-age)
		os.Chtimes(p, at, at)
	}
	write("i0123456789abcdef-"+key+".raw", 4096, 0)                                 // an image that is gone
	write(key+".raw", 4096, 0)                                                      // before tags
	write(cacheTag(base)+"-"+strings.Repeat("b", 64)+".raw", 4096, 40*24*time.Hour) // unused too long
	for i, age := range []time.Duration{3 * time.Hour, 2 * time.Hour, time.Hour} {
		write(cacheTag(base)+"-"+strings.Repeat(string(rune('c'+i)), 64)+".raw", 64<<10, age)
	}
	td.images.cacheCapBytes = 150 << 10 // two of the three 64 KiB entries fit
	td.images.pruneBuildCache(ctx)
	want := append([]string{
		cacheTag(base) + "-" + strings.Repeat("d", 64) + ".raw",
		cacheTag(base) + "-" + strings.Repeat("e", 64) + ".raw",
	}, built...)
	got := entries()
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("after prune:\n got %v\nwant %v", got, want)
	}

	// image rm of the built image: its last entry holds space of its own
	// now, past a cap that leaves no room.
	td.images.cacheCapBytes = 1
	if _, err := client.Do(ctx, c, wire.ImageRemove, wire.ImageRemoveParams{Name: "img"}); err != nil {
		t.Fatal(err)
	}
	if left := entries(); len(left) != 0 {
		t.Errorf("entries left past a cap of 1 byte after image rm: %v", left)
	}
}
