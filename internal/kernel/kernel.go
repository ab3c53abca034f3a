package kernel

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Sources of a kernel.
const (
	SourceDebianCloud = "debian-cloud"
	SourceHost        = "host"
	SourceImport      = "import"
	// SourceImage is a kernel registered with an image (image register
	// --kernel FILE): the image's own, removed with it when unused.
	SourceImage = "image"
)

// HostName is the name under which the host's own kernel is reported.
const HostName = "host"

const (
	vmlinuzFile   = "vmlinuz"
	modulesSubdir = "modules"
	metadataFile  = "kernel.json"
)

// Kernel is a guest kernel and, optionally, its modules.
type Kernel struct {
	Name       string `json:"name"`
	Release    string `json:"release"`     // e.g. 6.1.0-56-cloud-amd64; may be empty if unknown
	Vmlinuz    string `json:"vmlinuz"`     // absolute path of the bzImage
	ModulesDir string `json:"modules_dir"` // lib/modules/<release> equivalent; empty when none
	Source     string `json:"source"`      // SourceDebianCloud, SourceHost, SourceImport or SourceImage
}

// ErrNotFound is returned (wrapped) when a named kernel does not exist.
var ErrNotFound = errors.New("kernel not found")

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// ValidateName reports whether name is usable as a kernel name (it becomes a
// folder name, so it must be short and path-safe).
func ValidateName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("invalid kernel name %q: use 1-63 of [a-z0-9._-], starting with a letter or digit", name)
	}
	return nil
}

// metadata is what kernel.json holds; paths are derived from the folder so
// the state dir can be moved.
type metadata struct {
	Name    string `json:"name"`
	Release string `json:"release"`
	Source  string `json:"source"`
}

// Get loads the kernel called name from destRoot.
func Get(destRoot, name string) (Kernel, error) {
	if err := ValidateName(name); err != nil {
		return Kernel{}, err
	}
	dir := filepath.Join(destRoot, name)
	if _, err := os.Stat(filepath.Join(dir, vmlinuzFile)); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Kernel{}, fmt.Errorf("kernel %q: %w", name, ErrNotFound)
		}
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	return load(dir, name)
}

// List scans destRoot for installed kernels, sorted by name. The daemon keeps
// its own records; this is for recovery and for tools. A missing root is an
// empty list. Folders that do not hold a vmlinuz are ignored.
func List(destRoot string) ([]Kernel, error) {
	entries, err := os.ReadDir(destRoot)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list kernels: %w", err)
	}
	var out []Kernel
	for _, e := range entries {
		// Temporary folders start with "." and never match the name rule.
		if ValidateName(e.Name()) != nil {
			continue
		}
		dir := filepath.Join(destRoot, e.Name())
		// Stat, not the entry's type: a kernel folder may be a symlink to a
		// shared copy (tests share one unpacked kernel).
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, vmlinuzFile)); err != nil {
			continue
		}
		k, err := load(dir, e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func load(dir, name string) (Kernel, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Kernel{}, fmt.Errorf("kernel %q: %w", name, err)
	}
	k := Kernel{Name: name, Vmlinuz: filepath.Join(abs, vmlinuzFile), Source: SourceImport}
	if st, err := os.Stat(filepath.Join(abs, modulesSubdir)); err == nil && st.IsDir() {
		k.ModulesDir = filepath.Join(abs, modulesSubdir)
	}
	if b, err := os.ReadFile(filepath.Join(abs, metadataFile)); err == nil {
		var m metadata
		if err := json.Unmarshal(b, &m); err != nil {
			return Kernel{}, fmt.Errorf("kernel %q: read %s: %w", name, metadataFile, err)
		}
		k.Release, k.Source = m.Release, m.Source
	}
	if k.Release == "" {
		// Recovery path: no metadata, so read the release from the image.
		if rel, err := ReleaseFromBzImage(k.Vmlinuz); err == nil {
			k.Release = rel
		}
	}
	return k, nil
}

func writeMetadata(dir string, k Kernel) error {
	b, err := json.MarshalIndent(metadata{Name: k.Name, Release: k.Release, Source: k.Source}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, metadataFile), append(b, '\n'), 0o644)
}

// Host returns the host's own kernel, used in place (read only), when both
// /boot/vmlinuz-$(uname -r) and /lib/modules/$(uname -r) exist and the image
// is readable.
func Host() (Kernel, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return Kernel{}, fmt.Errorf("host kernel: uname: %w", err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	return hostAt("/", rel)
}

// hostAt is Host with the file system root and release injectable for tests.
func hostAt(root, rel string) (Kernel, error) {
	vmlinuz := filepath.Join(root, "boot", "vmlinuz-"+rel)
	mods := filepath.Join(root, "lib", "modules", rel)
	f, err := os.Open(vmlinuz)
	if err != nil {
		return Kernel{}, fmt.Errorf("host kernel not available: %w", err)
	}
	f.Close()
	if st, err := os.Stat(mods); err != nil || !st.IsDir() {
		return Kernel{}, fmt.Errorf("host kernel not available: no modules folder %s", mods)
	}
	return Kernel{Name: HostName, Release: rel, Vmlinuz: vmlinuz, ModulesDir: mods, Source: SourceHost}, nil
}

// releaseFromModulesDir guesses the release from a modules folder's name,
// which is how lib/modules/<release> is laid out.
func releaseFromModulesDir(dir string) string {
	base := filepath.Base(filepath.Clean(dir))
	if base == "." || base == "/" || base == modulesSubdir || strings.ContainsAny(base, " \t") {
		return ""
	}
	return base
}
