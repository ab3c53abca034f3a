// Command kernelcache puts Debian's cloud kernel into the test cache
// ($EMBER_TEST_CACHE/kernels, default .cache/kernels) unless one is there,
// so every test tier boots the same kernel without downloading it again.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/emberhq/ember/internal/kernel"
	"github.com/emberhq/ember/internal/testkernel"
)

func main() {
	if k, ok := testkernel.Lookup(); ok {
		fmt.Println(k.Dir)
		return
	}
	root := testkernel.Root()
	if err := os.MkdirAll(root, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "kernelcache:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	k, err := kernel.Fetch(ctx, root, func(s string) { fmt.Fprintln(os.Stderr, "kernelcache:", s) })
	if err != nil {
		fmt.Fprintln(os.Stderr, "kernelcache:", err)
		os.Exit(1)
	}
	fmt.Println(k.Vmlinuz)
}
