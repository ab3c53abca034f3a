package cli

import (
	"bytes"
	"testing"

	"github.com/emberhq/ember/internal/daemon"
)

func TestPrintChecksAligns(t *testing.T) {
	var b bytes.Buffer
	printChecks(&b, []daemon.Check{
		{Name: "qemu", Status: "pass", Detail: "/usr/bin/qemu-system-x86_64"},
		{Name: "cap_net_admin", Status: "pass", Detail: "present"},
		{Name: "qemu-img", Status: "fail", Detail: "not found", Fix: "sudo apt-get install --no-install-recommends qemu-utils"},
		{Name: "kernel", Status: "warn", Detail: "no guest kernel yet", Fix: "run `ember kernel fetch`"},
		{Name: "disk", Status: "pass", Detail: "9 MiB free", Fix: "a fix on a pass is not printed"},
	})
	want := `pass  qemu           /usr/bin/qemu-system-x86_64
pass  cap_net_admin  present
fail  qemu-img       not found
                     fix: sudo apt-get install --no-install-recommends qemu-utils
warn  kernel         no guest kernel yet
                     fix: run ` + "`ember kernel fetch`" + `
pass  disk           9 MiB free
`
	if got := b.String(); got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}
