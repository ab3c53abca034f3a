package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emberhq/ember/internal/layout"
	"github.com/emberhq/ember/internal/wire"
)

func TestSymlinkedPIDFileNotFollowed(t *testing.T) {
	home := t.TempDir()
	lay, err := layout.Resolve(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(lay.Runtime, 0o700); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(home, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, lay.PIDFile()); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), Options{Home: home, Driver: newFakeDriver(), Logger: discardLogger()})
	if err == nil || !strings.Contains(err.Error(), "pid file "+lay.PIDFile()+" is a symlink") {
		t.Fatalf("want a refusal, got %v", err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the symlink's target was written: %q", b)
	}
}

func TestHomeTooDeepForSocketsIsInvalid(t *testing.T) {
	home := filepath.Join(t.TempDir(), strings.Repeat("d", 90))
	_, err := Open(context.Background(), Options{Home: home, Driver: newFakeDriver(), Logger: discardLogger()})
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.CodeInvalid || !strings.Contains(err.Error(), "qmp.sock would be") ||
		!strings.Contains(err.Error(), "use a shorter --home") {
		t.Fatalf("want an invalid error with the fix, got %v", err)
	}
	if _, err := os.Stat(home); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("folders made before the refusal: %v", err)
	}
}

func TestSocketMode(t *testing.T) {
	td := openTestDaemon(t, "", newFakeDriver())
	serve(t, td)
	fi, err := os.Lstat(td.layout.Socket())
	if err != nil {
		t.Fatal(err)
	}
	want := os.FileMode(0o600)
	if os.Geteuid() == 0 {
		want = 0o660
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != want {
		t.Fatalf("socket %v, want a socket with mode %04o", fi.Mode(), want)
	}
}
