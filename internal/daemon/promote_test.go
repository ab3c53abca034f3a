package daemon

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/emberhq/ember/internal/client"
	"github.com/emberhq/ember/internal/guest"
	"github.com/emberhq/ember/internal/store"
	"github.com/emberhq/ember/internal/wire"
)

// promoteFixture is a daemon with one running VM, "src".
func promoteFixture(t *testing.T) (*testDaemon, *client.Client) {
	t.Helper()
	td := openTestDaemon(t, "", newFakeDriver())
	c := serve(t, td)
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "src"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create: %v %+v", err, op)
	}
	return td, c
}

// A running VM: its disk is copied between the guest's freeze and thaw,
// the image is registered, and the VM runs on untouched.
func TestPromoteRunningVM(t *testing.T) {
	for _, backup := range []bool{false, true} {
		t.Run(map[bool]string{false: "overlay copied while frozen", true: "hypervisor backup started while frozen"}[backup], func(t *testing.T) {
			testPromoteRunningVM(t, backup)
		})
	}
}

func testPromoteRunningVM(t *testing.T, backup bool) {
	td, c := promoteFixture(t)
	td.drv.mu.Lock()
	td.drv.backup = backup
	td.drv.mu.Unlock()
	ctx := context.Background()
	before, err := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: "src"})
	if err != nil {
		t.Fatal(err)
	}
	img, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	if img.Name != "snap" || img.Kind != store.ImagePromoted || img.Parent != before.Image || img.Format != "raw" || len(img.ID) != 32 {
		t.Fatalf("image %+v", img)
	}
	b, err := os.ReadFile(img.Path)
	if err != nil {
		t.Fatal(err)
	}
	// The copy was taken while frozen: after the freeze's mark, before the thaw's.
	if !strings.HasSuffix(string(b), freezeMark) {
		t.Fatalf("image content %q: not copied while the guest was frozen", b)
	}
	if td.drv.frozen || td.drv.freezes != 1 {
		t.Fatalf("frozen %v after promote, %d freezes", td.drv.frozen, td.drv.freezes)
	}
	after, err := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: "src"})
	if err != nil {
		t.Fatal(err)
	}
	if after.State != wire.StateRunning || after.PID != before.PID {
		t.Fatalf("vm after promote: %s pid %d, before pid %d", after.State, after.PID, before.PID)
	}
	if got := imagesDirEntries(t, td); len(got) != 1 {
		t.Fatalf("images folder: %v, want the image's file only", got)
	}
	// The new image is a parent like any other: a VM is created from it.
	op, err := createAndWait(t, c, wire.CreateVMParams{Name: "child", Image: "snap"})
	if err != nil || op.State != wire.OpSucceeded {
		t.Fatalf("create from the promoted image: %v %+v", err, op)
	}
}

func TestPromoteStoppedVM(t *testing.T) {
	td, c := promoteFixture(t)
	ctx := context.Background()
	if _, err := client.Do(ctx, c, wire.VMStop, wire.RefParams{Ref: "src", Force: true}); err != nil {
		t.Fatal(err)
	}
	img, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "snap"})
	if err != nil {
		t.Fatal(err)
	}
	if td.drv.freezes != 0 {
		t.Fatalf("a stopped vm's guest was frozen %d times", td.drv.freezes)
	}
	if _, err := os.Stat(img.Path); err != nil {
		t.Fatal(err)
	}
	vm, _ := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: "src"})
	if vm.State != wire.StateStopped {
		t.Fatalf("vm %s after promote", vm.State)
	}
}

func TestPromoteRefused(t *testing.T) {
	td, c := promoteFixture(t)
	ctx := context.Background()
	if _, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "taken"}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		p         wire.ImagePromoteParams
		code, msg string
	}{
		{wire.ImagePromoteParams{VM: "nope", Name: "x"}, wire.CodeNotFound, `vm "nope" not found`},
		{wire.ImagePromoteParams{VM: "src", Name: "taken"}, wire.CodeConflict, `an image named "taken" already exists`},
		{wire.ImagePromoteParams{VM: "src", Name: "tiny"}, wire.CodeConflict, `an image named "tiny" already exists`},
		{wire.ImagePromoteParams{VM: "src", Name: "Bad_Name"}, wire.CodeInvalid, `image name "Bad_Name" is not valid`},
		{wire.ImagePromoteParams{VM: "src", Name: ""}, wire.CodeInvalid, `image name "" is not valid`},
		{wire.ImagePromoteParams{VM: "", Name: "x"}, wire.CodeInvalid, `a vm name or id is needed`},
	} {
		_, err := client.Do(ctx, c, wire.ImagePromote, tc.p)
		wantCode(t, err, tc.code)
		if !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%+v: %v, want %q", tc.p, err, tc.msg)
		}
	}
	// A full host: refused before anything is made (running VMs on the
	// same file system would pause).
	freeSpace = func(string) (int64, error) { return 1 << 20, nil }
	_, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "x"})
	freeSpace = freeBytes
	wantCode(t, err, wire.CodeConflict)
	if !strings.Contains(err.Error(), "not enough free space to promote vm src") {
		t.Fatalf("promote on a full host: %v", err)
	}
	if td.drv.freezes != 1 {
		t.Fatalf("%d freezes: a refused promote froze the guest", td.drv.freezes)
	}
	if got := imagesDirEntries(t, td); len(got) != 1 {
		t.Fatalf("images folder: %v", got)
	}
}

// A failure at any point leaves no file, no row and a thawed, running VM.
func TestPromoteFailureLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(f *fakeDriver)
		code string
	}{
		{"freeze fails", func(f *fakeDriver) { f.freezeErr = errors.New("freeze /: operation not supported") }, wire.CodeInternal},
		{"freeze expired", func(f *fakeDriver) { f.thawErr = guest.ErrFreezeExpired }, wire.CodeTimeout},
		{"thaw fails", func(f *fakeDriver) { f.thawErr = errors.New("thaw /: invalid argument") }, wire.CodeInternal},
		{"flatten fails", func(f *fakeDriver) { f.flattenErr = errors.New("qemu-img convert: no space left") }, wire.CodeInternal},
		{"backup: freeze fails", func(f *fakeDriver) { f.backup, f.freezeErr = true, errors.New("freeze /: operation not supported") }, wire.CodeInternal},
		{"backup: thaw fails", func(f *fakeDriver) { f.backup, f.thawErr = true, guest.ErrFreezeExpired }, wire.CodeTimeout},
		{"backup: job fails", func(f *fakeDriver) { f.backup, f.backupErr = true, errors.New("block job: input/output error") }, wire.CodeInternal},
		{"backup: flatten fails", func(f *fakeDriver) { f.backup, f.flattenErr = true, errors.New("qemu-img convert: no space left") }, wire.CodeInternal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			td, c := promoteFixture(t)
			ctx := context.Background()
			td.drv.mu.Lock()
			tc.set(td.drv)
			td.drv.mu.Unlock()
			_, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "snap"})
			wantCode(t, err, tc.code)
			if got := imagesDirEntries(t, td); len(got) != 0 {
				t.Fatalf("files left: %v", got)
			}
			if _, err := td.store.GetImage(ctx, "snap"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("image row: %v", err)
			}
			if td.drv.frozen {
				t.Fatal("guest left frozen")
			}
			vm, _ := client.Do(ctx, c, wire.VMInspect, wire.RefParams{Ref: "src"})
			if vm.State != wire.StateRunning {
				t.Fatalf("vm %s", vm.State)
			}
		})
	}
}

// A client that gives up mid-copy cancels the promote: the guest is
// thawed, and no file or row is kept.
func TestPromoteCancelLeavesNothing(t *testing.T) {
	td, c := promoteFixture(t)
	started := make(chan struct{}, 1)
	td.drv.mu.Lock()
	td.drv.backup, td.drv.backupStarted = true, started
	td.drv.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := client.Do(ctx, c, wire.ImagePromote, wire.ImagePromoteParams{VM: "src", Name: "snap"})
		done <- err
	}()
	<-started
	if got := imagesDirEntries(t, td); len(got) != 1 {
		t.Fatalf("during the copy the images folder holds %v, want the copy", got)
	}
	cancel()
	if err := <-done; err == nil {
		t.Fatal("cancelled promote succeeded")
	}
	// The daemon notices the hang-up and undoes; wait for that by state.
	deadline := time.Now().Add(20 * time.Second)
	for {
		td.drv.mu.Lock()
		frozen := td.drv.frozen
		td.drv.mu.Unlock()
		if !frozen && len(imagesDirEntries(t, td)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after cancel: frozen %v, files %v", frozen, imagesDirEntries(t, td))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := td.store.GetImage(context.Background(), "snap"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("image row: %v", err)
	}
	vm, _ := client.Do(context.Background(), c, wire.VMInspect, wire.RefParams{Ref: "src"})
	if vm.State != wire.StateRunning {
		t.Fatalf("vm %s", vm.State)
	}
}

// A crash between the copy and the registration leaves files that the
// next start removes.
func TestPromoteLeftoversSwept(t *testing.T) {
	home := t.TempDir()
	td := openTestDaemon(t, home, newFakeDriver())
	left := td.layout.ImagesDir() + "/" + promoteTmpPrefix + "abc.raw"
	if err := os.WriteFile(left, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	td.Close()
	td = openTestDaemon(t, home, td.drv)
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("leftover kept: %v", err)
	}
}

// A cancel that comes once the promoted image is recorded does not fail
// the promote: its image stays, and the answer describes it.
func TestPromoteCancelAfterRecord(t *testing.T) {
	td, _ := promoteFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	td.images.recorded = func(string) { cancel() }
	t.Cleanup(func() { td.images.recorded = nil })
	got, err := td.vms.promoteVM(ctx, wire.ImagePromoteParams{VM: "src", Name: "snap"})
	if err != nil {
		t.Fatalf("promote cancelled after its record: %v", err)
	}
	rec, err := td.store.GetImage(context.Background(), "snap")
	if err != nil || got.Name != "snap" || got.ID != rec.ID || got.Path != rec.Path || got.Kind != store.ImagePromoted {
		t.Fatalf("answer %+v, row %+v (%v)", got, rec, err)
	}
}
