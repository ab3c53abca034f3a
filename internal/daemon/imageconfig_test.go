package daemon

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guestproto"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

func TestWithImageConfig(t *testing.T) {
	cfg := store.ImageConfig{Env: []string{"PATH=/img/bin", "A=1", "A=2", "NOEQUALS", "=x", "E="}, WorkingDir: "/work", User: "app"}
	env, dir, user := withImageConfig(cfg, map[string]string{"B": "own", "PATH": "/mine"}, "", "")
	if !reflect.DeepEqual(env, map[string]string{"PATH": "/mine", "A": "2", "B": "own", "E": ""}) || dir != "/work" || user != "app" {
		t.Errorf("defaults: %v %q %q", env, dir, user)
	}
	if _, dir, user := withImageConfig(cfg, nil, "/tmp", "root"); dir != "/tmp" || user != "root" {
		t.Errorf("the request's own: %q %q", dir, user)
	}
	own := map[string]string{"X": "1"}
	if env, dir, user := withImageConfig(store.ImageConfig{}, own, "", ""); !reflect.DeepEqual(env, own) || dir != "" || user != "" {
		t.Errorf("no config: %v %q %q", env, dir, user)
	}
}

// showReq runs the fake guest's showreq through vm.exec.
func showReq(t *testing.T, c *client.Client, p wire.ExecParams) string {
	t.Helper()
	p.Argv = []string{"showreq"}
	s, err := client.Open(context.Background(), c, wire.VMExec, p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var out strings.Builder
	for {
		kind, payload, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		switch kind {
		case wire.FrameStdout:
			out.Write(payload)
		case wire.FrameExit:
			return strings.TrimSpace(out.String())
		}
	}
}

// A VM from an image with a config runs exec and sessions with it; the
// VM keeps the config it was created with when the image changes.
func TestImageConfigAppliesToExecAndSessions(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "img.ext4")
	os.WriteFile(path, []byte("ext4"), 0o644)
	cfg := store.ImageConfig{Env: []string{"PATH=/usr/bin:/bin", "GREETING=hello"}, WorkingDir: "/work", User: "app"}
	if err := td.store.PutImage(ctx, store.Image{Name: "app", Kind: store.ImageImported, Path: path, Format: store.FormatRaw, SizeBytes: 4, Config: cfg}); err != nil {
		t.Fatal(err)
	}
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm1", Image: "app"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	// The image changes afterwards; the VM keeps what it was made with.
	if err := td.store.PutImage(ctx, store.Image{Name: "app", Kind: store.ImageImported, Path: path, Format: store.FormatRaw, SizeBytes: 4,
		Config: store.ImageConfig{Env: []string{"GREETING=changed"}, WorkingDir: "/elsewhere", User: "other"}}); err != nil {
		t.Fatal(err)
	}
	if got := showReq(t, c, wire.ExecParams{Ref: "vm1"}); got != "dir=/work user=app env=GREETING=hello,PATH=/usr/bin:/bin" {
		t.Errorf("exec with the image's defaults: %q", got)
	}
	if got := showReq(t, c, wire.ExecParams{Ref: "vm1", Env: map[string]string{"GREETING": "mine"}, Dir: "/tmp", User: "root"}); got != "dir=/tmp user=root env=GREETING=mine,PATH=/usr/bin:/bin" {
		t.Errorf("exec with its own -e -w -u: %q", got)
	}

	var vm wire.VM
	json.Unmarshal(op.Result, &vm)
	g := plantSessions(t, td, vm.ID, 0, map[string]*fakeSessionChannel{"main": newFakeSessionChannel()})
	fc := &fakeCreator{}
	g.sessionGuest = fc
	if _, err := client.Do(ctx, c, wire.SessionCreate, wire.SessionCreateParams{Ref: "vm1", SessionSpec: guestproto.SessionSpec{Name: "x", Env: map[string]string{"OWN": "1"}}}); err != nil {
		t.Fatal(err)
	}
	s, err := client.Open(ctx, c, wire.SessionAttach, wire.SessionAttachParams{Ref: "vm1", Name: "main", Create: true})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if len(fc.specs) < 2 {
		t.Fatalf("session creates: %+v", fc.specs)
	}
	want := []guestproto.SessionSpec{
		{Name: "x", Env: map[string]string{"OWN": "1", "GREETING": "hello", "PATH": "/usr/bin:/bin"}, Dir: "/work", User: "app"},
		{Name: "main", Env: map[string]string{"GREETING": "hello", "PATH": "/usr/bin:/bin"}, Dir: "/work", User: "app"},
	}
	if !reflect.DeepEqual(fc.specs[:2], want) {
		t.Errorf("session specs:\n got %+v\nwant %+v", fc.specs[:2], want)
	}

	// A VM of an image without a config runs commands as before.
	if op, err := createAndWait(t, c, wire.CreateVMParams{Name: "vm2"}); err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	if got := showReq(t, c, wire.ExecParams{Ref: "vm2"}); got != "dir= user= env=" {
		t.Errorf("exec without a config: %q", got)
	}
}
