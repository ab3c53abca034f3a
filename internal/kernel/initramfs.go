package kernel

import (
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// initramfsFormat changes whenever the archive layout changes, so old cached
// files get new keys.
const initramfsFormat = "ember-initramfs-v1"

// ModuleListPath is where the initramfs lists its modules (absolute in-guest
// paths, one per line, in load order).
const ModuleListPath = "/etc/ember/modules"

// ShareModuleListPath is where the initramfs lists the modules of a share
// transport (ShareModules), present only when the kernel has them all.
func ShareModuleListPath(transport string) string { return ModuleListPath + "-" + transport }

// initramfsDirs are created in every initramfs; /newroot is where the agent
// mounts the real root before switching to it.
var initramfsDirs = []string{"dev", "proc", "sys", "newroot", "etc", "etc/ember", "lib", "lib/modules"}

// plan is what goes into one kernel's initramfs besides the agent. Its
// modules are read through ix (an os.Root of the modules folder); close
// releases it.
type plan struct {
	release string
	modules []resolvedModule
	shares  map[string][]resolvedModule // transport → its modules, for those the kernel has
	ix      *moduleIndex
}

func (p plan) close() {
	if p.ix != nil {
		p.ix.close()
	}
}

func makePlan(ctx context.Context, k Kernel) (plan, error) {
	p := plan{release: k.Release}
	if k.ModulesDir == "" {
		slog.InfoContext(ctx, "kernel has no modules folder; virtio drivers must be built in", "kernel", k.Name)
		return p, nil
	}
	if p.release == "" {
		p.release = releaseFromModulesDir(k.ModulesDir)
	}
	if p.release == "" {
		return p, fmt.Errorf("kernel %s: release unknown, cannot place modules", k.Name)
	}
	ix, err := loadIndex(k.ModulesDir)
	if err != nil {
		return p, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	want := append(append([]string(nil), GuestModules...), ix.available(OptionalGuestModules)...)
	mods, err := ix.resolve(ctx, want)
	if err != nil {
		ix.close()
		return p, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	p.modules, p.ix = mods, ix
	for _, t := range shareTransports() {
		sm, err := ix.resolve(ctx, ShareModules[t])
		if err != nil {
			slog.InfoContext(ctx, "kernel cannot mount shares of this kind", "kernel", k.Name, "transport", t, "why", err)
			continue
		}
		if p.shares == nil {
			p.shares = map[string][]resolvedModule{}
		}
		p.shares[t] = sm
	}
	return p, nil
}

// shareTransports is ShareModules' keys in a fixed order.
func shareTransports() []string {
	t := make([]string, 0, len(ShareModules))
	for k := range ShareModules {
		t = append(t, k)
	}
	sort.Strings(t)
	return t
}

// files is every module the initramfs holds, each once: the boot's, then
// the share transports'.
func (p plan) files() []resolvedModule {
	seen := map[string]bool{}
	var out []resolvedModule
	add := func(ms []resolvedModule) {
		for _, m := range ms {
			if !seen[m.Rel] {
				seen[m.Rel] = true
				out = append(out, m)
			}
		}
	}
	add(p.modules)
	for _, t := range shareTransports() {
		add(p.shares[t])
	}
	return out
}

// guestPath is a module's absolute path inside the initramfs.
func (p plan) guestPath(m resolvedModule) string {
	return path.Join("/lib/modules", p.release, m.Rel)
}

// InitramfsKey identifies the initramfs BuildInitramfs would make for k and
// this agent: a hash of the agent's bytes, the kernel release and the
// resolved module list (paths and sizes). The daemon names the file
// initramfs-<key>.cpio.gz and reuses it while the key is unchanged.
func InitramfsKey(k Kernel, agentPath string) (string, error) {
	p, err := makePlan(context.Background(), k)
	if err != nil {
		return "", err
	}
	defer p.close()
	return p.key(agentPath)
}

func (p plan) key(agentPath string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\nrelease=%s\n", initramfsFormat, p.release)
	for _, t := range shareTransports() {
		if ms, ok := p.shares[t]; ok {
			fmt.Fprintf(h, "share=%s modules=%d\n", t, len(ms))
		}
	}
	for _, m := range p.files() {
		st, err := p.ix.dir.Stat(m.Src)
		if err != nil {
			return "", fmt.Errorf("initramfs key: %w", err)
		}
		fmt.Fprintf(h, "module=%s size=%d\n", p.guestPath(m), st.Size())
	}
	f, err := os.Open(agentPath)
	if err != nil {
		return "", fmt.Errorf("initramfs key: agent: %w", err)
	}
	defer f.Close()
	io.WriteString(h, "agent\n")
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("initramfs key: read agent: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:20], nil
}

// BuildInitramfs writes a gzip-compressed newc archive to outPath holding
// /init (the agent), /dev/console, the folders the agent needs, the guest
// modules (decompressed) and ModuleListPath. The output is written to a
// temporary file and renamed, and is byte-for-byte reproducible.
func BuildInitramfs(ctx context.Context, k Kernel, agentPath, outPath string) (err error) {
	p, err := makePlan(ctx, k)
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	defer p.close()
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return fmt.Errorf("build initramfs: read agent: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(outPath), ".initramfs-*.tmp")
	if err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := p.write(ctx, tmp, agent); err != nil {
		return fmt.Errorf("build initramfs for %s: %w", k.Name, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	if err := os.Rename(tmp.Name(), outPath); err != nil {
		return fmt.Errorf("build initramfs: %w", err)
	}
	return nil
}

func (p plan) write(ctx context.Context, w io.Writer, agent []byte) error {
	// Header fields (name, mtime) stay zero, which keeps the output stable.
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	c := &newcWriter{w: zw}

	dirs := map[string]bool{}
	for _, d := range initramfsDirs {
		dirs[d] = true
	}
	var list strings.Builder
	for _, m := range p.files() {
		gp := p.guestPath(m)
		for d := path.Dir(strings.TrimPrefix(gp, "/")); d != "." && d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	for _, m := range p.modules {
		list.WriteString(p.guestPath(m) + "\n")
	}
	// Sorted order puts every parent before its children.
	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}
	sort.Strings(sorted)
	for _, d := range sorted {
		c.dir(d, 0o755)
	}
	c.charDev("dev/console", 0o600, 5, 1)
	c.file("init", 0o755, agent)
	c.file(strings.TrimPrefix(ModuleListPath, "/"), 0o644, []byte(list.String()))
	for _, t := range shareTransports() {
		ms, ok := p.shares[t]
		if !ok {
			continue
		}
		var sl strings.Builder
		for _, m := range ms {
			sl.WriteString(p.guestPath(m) + "\n")
		}
		c.file(strings.TrimPrefix(ShareModuleListPath(t), "/"), 0o644, []byte(sl.String()))
	}
	for _, m := range p.files() {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := readModuleAt(p.ix.dir, m.Src)
		if err != nil {
			return err
		}
		c.file(strings.TrimPrefix(p.guestPath(m), "/"), 0o644, data)
	}
	if err := c.close(); err != nil {
		return err
	}
	return zw.Close()
}
