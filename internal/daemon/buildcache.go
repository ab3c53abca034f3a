package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/emberhq/ember/internal/store"
)

// The step cache (images/cache) keeps each RUN, COPY and PACKAGES step's
// result, named <tag>-<key>.raw: key chains the steps from the FROM image
// (buildState.chain), tag names that image ("i" and its ID's first 16
// digits, or "o" and an OCI base's digest's, whose ext4 file is
// oci-<digest>.ext4 beside its .json). Entries are written once and a
// cache hit touches the entry's mtime, so mtime is its last use. The
// cache is pruned (pruneBuildCacheLocked) when the last running build
// ends, after `image rm` and at start, never while a build runs (its
// steps read entries by path):
//   - entries whose tag names no image and no OCI base left: no build can
//     reach them again (an image made anew gets a new ID);
//   - entries and OCI bases unused for buildCacheMaxAge;
//   - then the least recently used until the entries' own space (blocks
//     not shared with an image file: a built image is a hard link of its
//     last entry) fits buildCacheCap.
const (
	buildCacheMaxAge   = 30 * 24 * time.Hour
	buildCacheMaxBytes = int64(20) << 30
)

var (
	cacheEntryRE = regexp.MustCompile(`^([io][0-9a-f]{16})-[0-9a-f]{64}\.raw$`)
	legacyRE     = regexp.MustCompile(`^[0-9a-f]{64}\.raw$`) // before tags: unreachable now
	ociBaseRE    = regexp.MustCompile(`^oci-([0-9a-f]{64})\.ext4$`)
)

// cacheTag is the tag of the entries of builds FROM parent.
func cacheTag(parent store.Image) string {
	if d, ok := strings.CutPrefix(parent.ID, "oci sha256:"); ok && len(d) >= 16 {
		return "o" + d[:16]
	}
	if len(parent.ID) >= 16 {
		return "i" + parent.ID[:16]
	}
	return "i" + strings.Repeat("0", 16-len(parent.ID)) + parent.ID
}

// touchCacheEntry marks path used now (its mtime), for pruning.
func touchCacheEntry(path string) {
	now := time.Now()
	_ = os.Chtimes(path, now, now)
}

// buildCacheCap is the bound on the cache's own space: buildCacheMaxBytes,
// or a quarter of the images file system if that is less.
func buildCacheCap(dir string) int64 {
	var st unix.Statfs_t
	if unix.Statfs(dir, &st) == nil {
		if q := int64(st.Blocks) * st.Bsize / 4; q > 0 && q < buildCacheMaxBytes {
			return q
		}
	}
	return buildCacheMaxBytes
}

// buildStarted counts a build in progress; buildEnded uncounts it and,
// after the last one, prunes the cache.
func (s *imageService) buildStarted() {
	s.imageOpsMu.Lock()
	s.activeBuilds++
	s.imageOpsMu.Unlock()
}

func (s *imageService) buildEnded() {
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	s.activeBuilds--
	s.pruneBuildCacheLocked(context.Background())
}

// pruneBuildCache is pruneBuildCacheLocked under imageOpsMu (at start).
func (s *imageService) pruneBuildCache(ctx context.Context) {
	s.imageOpsMu.Lock()
	defer s.imageOpsMu.Unlock()
	s.pruneBuildCacheLocked(ctx)
}

type cacheFile struct {
	paths  []string // an OCI base's .ext4 and .json
	tag    string   // an entry's tag; "" for an OCI base
	own    int64    // blocks no image file shares
	used   time.Time
	ociTag string // an OCI base's tag
}

// pruneBuildCacheLocked prunes the step cache as the comment above says,
// unless a build runs. Callers hold imageOpsMu. Errors are logged: a
// cache that keeps a file too many is no failure of the caller.
func (s *imageService) pruneBuildCacheLocked(ctx context.Context) {
	if s.activeBuilds > 0 {
		return
	}
	dir := filepath.Join(s.layout.ImagesDir(), buildCacheDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("build cache: list", "err", err)
		}
		return
	}
	imgs, err := s.store.ListImages(ctx)
	if err != nil {
		s.log.Warn("build cache: list images", "err", err)
		return
	}
	live := map[string]bool{}
	for _, img := range imgs {
		live[cacheTag(img)] = true
	}
	var files []cacheFile
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(dir, name)
		var f cacheFile
		switch {
		case legacyRE.MatchString(name):
			s.removeCacheFiles(path)
			continue
		case cacheEntryRE.MatchString(name):
			f = cacheFile{paths: []string{path}, tag: cacheEntryRE.FindStringSubmatch(name)[1]}
		case ociBaseRE.MatchString(name):
			hex := ociBaseRE.FindStringSubmatch(name)[1]
			f = cacheFile{paths: []string{path, strings.TrimSuffix(path, ".ext4") + ".json"}, ociTag: "o" + hex[:16]}
		default:
			continue
		}
		fi, err := os.Stat(path)
		if err != nil {
			continue
		}
		f.used = fi.ModTime()
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 1 {
			f.own = st.Blocks * 512
		}
		files = append(files, f)
	}
	// Oldest first: age, then size, then orphans (after the OCI bases
	// they hang on are decided).
	sort.Slice(files, func(i, j int) bool { return files[i].used.Before(files[j].used) })
	var total int64
	for _, f := range files {
		total += f.own
	}
	capBytes := buildCacheCap(dir)
	if s.cacheCapBytes > 0 {
		capBytes = s.cacheCapBytes
	}
	now := time.Now()
	kept := files[:0]
	for _, f := range files {
		// Removing an entry an image shares frees nothing: only age takes it.
		if now.Sub(f.used) > buildCacheMaxAge || (total > capBytes && f.own > 0) {
			s.removeCacheFiles(f.paths...)
			total -= f.own
			continue
		}
		kept = append(kept, f)
	}
	for _, f := range kept {
		if f.ociTag != "" {
			live[f.ociTag] = true
		}
	}
	for _, f := range kept {
		if f.tag != "" && !live[f.tag] {
			s.removeCacheFiles(f.paths...)
		}
	}
}

func (s *imageService) removeCacheFiles(paths ...string) {
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("build cache: remove", "file", p, "err", err)
		}
	}
}
