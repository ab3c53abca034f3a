package daemon

import (
	"errors"
	"fmt"
	"strings"
)

// envCap is `--cap env=KEY=VALUE`: the variable is set for every exec and
// session in the VM, above the image's Env and below the request's own
// (-e). It acts at no lifecycle point (commandEnv).
type envCap struct{ capHooks }

func (envCap) capName() string { return "env" }

func (envCap) check(args []string) error {
	for _, a := range args {
		k, _, ok := strings.Cut(a, "=")
		switch {
		case !ok:
			return fmt.Errorf("%q is not KEY=VALUE", a)
		case k == "":
			return errors.New("a variable needs a name (KEY=VALUE)")
		case strings.ContainsRune(a, 0):
			return fmt.Errorf("variable %q holds a NUL byte", k)
		}
	}
	return nil
}

func (envCap) commandEnv(args []string) []string { return args }
