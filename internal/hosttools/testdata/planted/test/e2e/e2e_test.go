package e2e

import (
	"context"
	"os/exec"
	"testing"
)

type env struct{ ns string }

func (e *env) inNS(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", e.ns, name}, args...)...) // want ip:test
}

func (e *env) sh(name string, args ...string) string {
	out, _ := e.inNS(context.Background(), name, args...).Output()
	return string(out)
}

func TestPlanted(t *testing.T) {
	e := &env{ns: "x"}
	e.sh("planted-method", "arg") // want planted-method
	e.sh("nft", "list", "tables") // want nft:test
}
