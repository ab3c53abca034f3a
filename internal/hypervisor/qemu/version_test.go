package qemu

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

func TestVersionIsTheFirstLine(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	script := "#!/bin/sh\n[ \"$1\" = --version ] || exit 9\nprintf 'QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)\\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\\n'\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{QEMUPath: bin, QEMUImgPath: bin, TSCKHz: -1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := d.Version(context.Background())
	if want := "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u16)"; err != nil || got != want {
		t.Fatalf("Version = %q, %v; want %q", got, err, want)
	}
	d.qemu = filepath.Join(t.TempDir(), "missing")
	if _, err := d.Version(context.Background()); err == nil {
		t.Fatal("a missing binary gave a version")
	}
}
