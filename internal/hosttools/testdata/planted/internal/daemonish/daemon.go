// Package daemonish executes programs in every way the guard must see.
package daemonish

import (
	"context"
	"os"
	"os/exec"
	"syscall"

	"example.com/planted/internal/tools"
	"github.com/emberhq/ember/internal/hosttools"
)

const plantedConst = "planted-const"

func literal() {
	_ = exec.Command("planted-literal").Run() // want planted-literal
}

func constant(ctx context.Context) {
	_ = exec.CommandContext(ctx, plantedConst).Run() // want planted-const
}

func rangeLoop() {
	for _, p := range []string{"planted-range-a", "planted-range-b"} {
		_, _ = exec.LookPath(p) // want planted-range-a planted-range-b
	}
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	return cmd.Run()
}

func wrapped(ctx context.Context) {
	_ = run(ctx, "", "planted-wrapped", "arg") // want planted-wrapped
}

func cross() {
	_, _ = tools.Find("planted-cross") // want planted-cross
	_, _ = tools.Find(tools.Name)      // want planted-cross-const
}

func closure() {
	inNS := func(name string, args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", "ns1", name}, args...)...) // want ip:run ip:test
	}
	_ = inNS("planted-closure").Run() // want planted-closure
}

func shellC() {
	_ = exec.Command("/bin/sh", "-c", "planted-sh-c --flag | planted-sh-c2").Run() // want planted-sh-c planted-sh-c2
}

func find() {
	_, _ = hosttools.Find("planted-find") // want planted-find
}

func absolute() {
	_ = exec.Command("/usr/sbin/planted-abs-go").Run() // want planted-abs-go
}

func syscallExec() {
	_ = syscall.Exec("/usr/bin/planted-syscall", nil, nil) // want planted-syscall
}

func local() {
	p := "planted-local"
	_ = exec.Command(p).Run() // want planted-local
}

func purpose() {
	_ = exec.Command("dnsmasq").Run() // want dnsmasq:run dnsmasq:test
}

func fine(p string) {
	_ = exec.Command(p).Run() // a resolved path: the finder covers it
	_ = exec.Command("/proc/self/exe").Run()
	_ = exec.Command("./bin/planted-never-relative").Run()
	_ = exec.Command("go", "version").Run()
	_, _ = os.StartProcess("/proc/self/exe", nil, nil)
}
