package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/emberhq/ember/internal/wire"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ember.db")
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

// fakeClock makes stamped times deterministic and strictly increasing.
func fakeClock(s *Store) {
	var mu sync.Mutex
	t := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	s.now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		t = t.Add(time.Second)
		return t
	}
}

func testVM(id, name string) VM {
	return VM{
		ID: id, Name: name, State: wire.StateRunning, Image: "debian", Kernel: "6.1",
		CPUs: 2, MemoryMiB: 512, DiskBytes: 1 << 30, NetMode: "user", SSHPort: 2222,
		PID: 4242, PIDStart: 987654321, Accel: "tcg", AccelReason: "set by accel = \"tcg\" in the config", LastError: "",
		Config: json.RawMessage(`{"machine":"microvm"}`),
	}
}

func TestOpenRejectsMissingDirAndMemory(t *testing.T) {
	ctx := context.Background()
	if _, err := Open(ctx, filepath.Join(t.TempDir(), "nope", "ember.db")); err == nil {
		t.Fatal("Open in a missing directory succeeded")
	}
	if _, err := Open(ctx, ":memory:"); err == nil {
		t.Fatal("Open(:memory:) succeeded")
	}
}

func TestOpenOddPath(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "a b?c#d%20e")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "ember.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.InsertVM(ctx, testVM("x", "x")); err != nil {
		t.Fatal(err)
	}
	// The data went to exactly that file, not to a misparsed name.
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Errorf("no WAL beside %s: %v", path, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(dir))
	if len(entries) != 1 {
		t.Errorf("stray files next to the db dir: %v", entries)
	}
}

func TestCheckFindsCorruption(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	for i := range 200 {
		if err := s.InsertVM(ctx, testVM(fmt.Sprintf("id%03d", i), fmt.Sprintf("vm%03d", i))); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	// Scribble over the second half of the file, past the schema page.
	junk := make([]byte, fi.Size()/2)
	for i := range junk {
		junk[i] = 0xA5
	}
	f.WriteAt(junk, fi.Size()/2)
	f.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Skipf("corruption already caught by Open: %v", err)
	}
	defer s2.Close()
	if err := s2.Check(ctx); err == nil {
		t.Fatal("Check passed on a corrupted database")
	} else {
		t.Logf("Check: %v", err)
	}
}

func TestOpenSetsPragmas(t *testing.T) {
	s, path := openTest(t)
	ctx := context.Background()
	var mode string
	if err := s.rdb.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
		t.Fatalf("journal_mode = %q, %v; want wal", mode, err)
	}
	for name, want := range map[string]int{"foreign_keys": 1, "busy_timeout": busyTimeoutMS} {
		for _, db := range []dbtx{s.rdb, s.wdb} {
			var got int
			if err := db.QueryRowContext(ctx, "PRAGMA "+name).Scan(&got); err != nil || got != want {
				t.Errorf("PRAGMA %s = %d, %v; want %d", name, got, err, want)
			}
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("db file mode = %v, want 0600", fi.Mode().Perm())
	}
	// The read pool must not be able to write.
	if _, err := s.rdb.ExecContext(ctx, "DELETE FROM vms"); err == nil {
		t.Error("write through the read-only pool succeeded")
	}
}

func TestMigrationsIdempotentOnReopen(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.SchemaVersion(ctx); err != nil || v != len(ms) {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, len(ms))
	}
	if err := s.InsertVM(ctx, testVM("a1", "one")); err != nil {
		t.Fatal(err)
	}
	s.Close()
	for i := 0; i < 2; i++ {
		s2, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("reopen %d: %v", i, err)
		}
		if v, _ := s2.SchemaVersion(ctx); v != len(ms) {
			t.Errorf("reopen %d: version %d", i, v)
		}
		if _, err := s2.GetVM(ctx, "a1"); err != nil {
			t.Errorf("reopen %d: data lost: %v", i, err)
		}
		s2.Close()
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	ctx := context.Background()
	s, path := openTest(t)
	if _, err := s.wdb.ExecContext(ctx, "PRAGMA user_version = 999"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if s2, err := Open(ctx, path); err == nil {
		s2.Close()
		t.Fatal("Open accepted a schema newer than the binary")
	}
}

func columns(t *testing.T, s *Store, table string) []string {
	t.Helper()
	rows, err := s.rdb.Query("SELECT name FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		cols = append(cols, c)
	}
	return cols
}

func TestMigration0001Schema(t *testing.T) {
	s, _ := openTest(t)
	want := map[string][]string{
		"kernels":    {"name", "release", "source", "vmlinuz", "modules_dir", "created_at", "is_default"},                                                                                                                                                                                                           // is_default: 0006
		"images":     {"name", "kind", "path", "format", "size_bytes", "kernel", "created_at", "meta", "id", "parent", "recipe_digest", "config"},                                                                                                                                                                   // id, parent, recipe_digest, config: 0008
		"vms":        {"id", "name", "state", "image", "kernel", "cpus", "memory_mib", "disk_bytes", "net_mode", "ssh_port", "pid", "pid_start", "accel", "created_at", "updated_at", "last_error", "config", "accel_reason", "agent_host_key", "restart_policy", "stopped_by", "image_config", "caps", "ssh_keys"}, // accel_reason: 0004, agent_host_key: 0005, restart_policy and stopped_by: 0007, image_config: 0009, caps: 0010, ssh_keys: 0011
		"operations": {"id", "kind", "target", "state", "progress", "error", "result", "created_at", "updated_at", "finished_at", "error_code"},                                                                                                                                                                     // error_code: 0003
	}
	for table, cols := range want {
		if got := columns(t, s, table); !reflect.DeepEqual(got, cols) {
			t.Errorf("%s columns = %v, want %v", table, got, cols)
		}
	}
	rows, err := s.rdb.Query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var tables []string
	for rows.Next() {
		var n string
		rows.Scan(&n)
		tables = append(tables, n)
	}
	// leases comes from 0002 (TestMigration0002Leases), snapshots from 0012.
	if want := []string{"images", "kernels", "leases", "operations", "snapshots", "vms"}; !reflect.DeepEqual(tables, want) {
		t.Errorf("tables = %v, want %v", tables, want)
	}
}

func TestLoadMigrationsRejectsBadNames(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"gap":        {"migrations/0001_a.sql": {}, "migrations/0003_c.sql": {}},
		"dup":        {"migrations/0001_a.sql": {}, "migrations/1_b.sql": {}},
		"unnumbered": {"migrations/init.sql": {}},
	} {
		if _, err := loadMigrations(fsys); err == nil {
			t.Errorf("%s: loadMigrations accepted %v", name, fsys)
		}
	}
}

func TestFailedMigrationRollsBack(t *testing.T) {
	ctx := context.Background()
	// A raw database, so the embedded migrations are not applied first.
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "raw.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fsys := fstest.MapFS{
		"migrations/0001_init.sql": {Data: []byte("CREATE TABLE a (x INTEGER);")},
		"migrations/0002_bad.sql":  {Data: []byte("CREATE TABLE b (x INTEGER); THIS IS NOT SQL;")},
	}
	if err := migrate(ctx, db, fsys); err == nil {
		t.Fatal("migrate with a broken migration succeeded")
	}
	var v, a, b int
	db.QueryRow("PRAGMA user_version").Scan(&v)
	db.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'a'").Scan(&a)
	db.QueryRow("SELECT count(*) FROM sqlite_schema WHERE name = 'b'").Scan(&b)
	if v != 1 || a != 1 || b != 0 {
		t.Errorf("after failed 0002: version %d, table a %d, table b %d; want 1, 1, 0", v, a, b)
	}
	// Fixing the file lets the next run finish the job.
	fsys["migrations/0002_bad.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE b (x INTEGER);")}
	if err := migrate(ctx, db, fsys); err != nil {
		t.Fatalf("migrate after fix: %v", err)
	}
	db.QueryRow("PRAGMA user_version").Scan(&v)
	if v != 2 {
		t.Errorf("version after fix = %d, want 2", v)
	}
}

func TestMigration0003OperationErrorCode(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.PutOperation(ctx, Operation{ID: "o1", Kind: "vm.create", Target: "x", State: wire.OpFailed,
		Error: `image "y" not found`, ErrorCode: "not_found"}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetOperation(ctx, "o1")
	if err != nil || got.ErrorCode != "not_found" {
		t.Fatalf("error code round trip: %v %+v", err, got)
	}
}

func TestMigration0005AgentHostKey(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	vm := VM{ID: "v5", Name: "pinned", State: "running", Image: "tiny", NetMode: "user"}
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "v5")
	if err != nil || got.AgentHostKey != "" {
		t.Fatalf("a new vm has host key %q (%v), want none", got.AgentHostKey, err)
	}
	got.AgentHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	again, err := s.GetVMByName(ctx, "pinned")
	if err != nil || again.AgentHostKey != got.AgentHostKey {
		t.Fatalf("host key round trip: %q, %v", again.AgentHostKey, err)
	}
}

// 0006: a kernel is the default only when asked, one at a time; putting
// a kernel again (a re-import, a fetch) keeps the mark.
func TestMigration0006KernelDefault(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	for _, name := range []string{"fetched", "imported"} {
		if err := s.PutKernel(ctx, Kernel{Name: name, Vmlinuz: "/k/" + name}); err != nil {
			t.Fatal(err)
		}
	}
	defaults := func() []string {
		ks, err := s.ListKernels(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, k := range ks {
			if k.Default {
				out = append(out, k.Name)
			}
		}
		return out
	}
	if d := defaults(); len(d) != 0 {
		t.Fatalf("new kernels are default: %v", d)
	}
	for _, name := range []string{"imported", "fetched", "fetched"} {
		if err := s.SetDefaultKernel(ctx, name); err != nil {
			t.Fatal(err)
		}
		if d := defaults(); !reflect.DeepEqual(d, []string{name}) {
			t.Fatalf("after SetDefaultKernel(%s): %v", name, d)
		}
	}
	if err := s.PutKernel(ctx, Kernel{Name: "fetched", Vmlinuz: "/k/again"}); err != nil {
		t.Fatal(err)
	}
	if k, err := s.GetKernel(ctx, "fetched"); err != nil || !k.Default || k.Vmlinuz != "/k/again" {
		t.Fatalf("re-put kernel: %+v %v", k, err)
	}
	if err := s.SetDefaultKernel(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown kernel: %v", err)
	}
	if d := defaults(); !reflect.DeepEqual(d, []string{"fetched"}) {
		t.Fatalf("a failed SetDefaultKernel changed the default: %v", d)
	}
	if _, err := s.w.ExecContext(ctx, `UPDATE kernels SET is_default = 1`); err == nil {
		t.Fatal("two default kernels accepted")
	}
	if err := s.SetDefaultKernel(ctx, ""); err != nil || len(defaults()) != 0 {
		t.Fatalf("clearing the default: %v %v", err, defaults())
	}
}

// 0007: a VM's restart policy and how it stopped round-trip; a VM from
// before has neither (never restarted, cause unknown).
func TestMigration0007RestartPolicy(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	vm := VM{ID: "v7", Name: "comes-back", State: "running", Image: "tiny", NetMode: "user", RestartPolicy: "always"}
	if err := s.InsertVM(ctx, vm); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "v7")
	if err != nil || got.RestartPolicy != "always" || got.StoppedBy != "" {
		t.Fatalf("new vm: %+v %v", got, err)
	}
	got.State, got.StoppedBy = "stopped", "crash"
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	again, err := s.GetVMByName(ctx, "comes-back")
	if err != nil || again.RestartPolicy != "always" || again.StoppedBy != "crash" {
		t.Fatalf("round trip: %+v %v", again, err)
	}
	if err := s.InsertVM(ctx, VM{ID: "v8", Name: "plain", State: "stopped"}); err != nil {
		t.Fatal(err)
	}
	if old, err := s.GetVM(ctx, "v8"); err != nil || old.RestartPolicy != "" || old.StoppedBy != "" {
		t.Fatalf("a vm without a policy: %+v %v", old, err)
	}
}

// 0009: a VM's copy of its image's config round-trips; none reads as the
// zero config.
func TestMigration0009VMImageConfig(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	cfg := ImageConfig{Env: []string{"A=1", "B=2"}, WorkingDir: "/work", User: "app"}
	if err := s.InsertVM(ctx, VM{ID: "v9", Name: "configured", State: "creating", ImageConfig: cfg}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "v9")
	if err != nil || !reflect.DeepEqual(got.ImageConfig, cfg) {
		t.Fatalf("round trip: %+v %v", got.ImageConfig, err)
	}
	got.State = "running"
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, err := s.GetVM(ctx, "v9"); err != nil || !reflect.DeepEqual(again.ImageConfig, cfg) {
		t.Fatalf("after update: %+v %v", again.ImageConfig, err)
	}
	if err := s.InsertVM(ctx, VM{ID: "v10", Name: "plain", State: "stopped"}); err != nil {
		t.Fatal(err)
	}
	if plain, err := s.GetVM(ctx, "v10"); err != nil || !plain.ImageConfig.IsZero() {
		t.Fatalf("no config: %+v %v", plain.ImageConfig, err)
	}
}

// 0010: a VM's capabilities round-trip in order, through an update too;
// none reads as none.
func TestMigration0010VMCaps(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	caps := []VMCap{{Name: "port", Arg: "18080:8080"}, {Name: "env", Arg: "FOO=bar"}, {Name: "env", Arg: "A="}}
	if err := s.InsertVM(ctx, VM{ID: "c1", Name: "capped", State: "creating", Caps: caps}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "c1")
	if err != nil || !reflect.DeepEqual(got.Caps, caps) {
		t.Fatalf("round trip: %+v %v", got.Caps, err)
	}
	got.Caps = caps[1:]
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, err := s.GetVM(ctx, "c1"); err != nil || !reflect.DeepEqual(again.Caps, caps[1:]) {
		t.Fatalf("after update: %+v %v", again.Caps, err)
	}
	if err := s.InsertVM(ctx, VM{ID: "c2", Name: "plain", State: "stopped"}); err != nil {
		t.Fatal(err)
	}
	if plain, err := s.GetVM(ctx, "c2"); err != nil || plain.Caps != nil {
		t.Fatalf("no caps: %+v %v", plain.Caps, err)
	}
}

// 0011: a VM's user keys round-trip in order, through an update too;
// none reads as none.
func TestMigration0011VMSSHKeys(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	keys := []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB", "ssh-rsa AAAAB3NzaC1yc2E"}
	if err := s.InsertVM(ctx, VM{ID: "k1", Name: "keyed", State: "creating", SSHKeys: keys}); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetVM(ctx, "k1")
	if err != nil || !reflect.DeepEqual(got.SSHKeys, keys) {
		t.Fatalf("round trip: %+v %v", got.SSHKeys, err)
	}
	got.SSHKeys = keys[1:]
	if err := s.UpdateVM(ctx, got); err != nil {
		t.Fatal(err)
	}
	if again, err := s.GetVM(ctx, "k1"); err != nil || !reflect.DeepEqual(again.SSHKeys, keys[1:]) {
		t.Fatalf("after update: %+v %v", again.SSHKeys, err)
	}
	if err := s.InsertVM(ctx, VM{ID: "k2", Name: "plain", State: "stopped"}); err != nil {
		t.Fatal(err)
	}
	if plain, err := s.GetVM(ctx, "k2"); err != nil || plain.SSHKeys != nil {
		t.Fatalf("no keys: %+v %v", plain.SSHKeys, err)
	}
}

// 0008: an image's ID, parent, recipe digest and config round-trip; a new
// put without an ID gets a fresh one; users and children are listed.
func TestMigration0008ImageMetadata(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	base := Image{Name: "base", Kind: ImageBuiltin, Path: "/x/base.ext4", Format: FormatRaw}
	if err := s.PutImage(ctx, base); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetImage(ctx, "base")
	if err != nil || len(got.ID) != 32 || got.Parent != "" || !got.Config.IsZero() {
		t.Fatalf("base: %+v %v", got, err)
	}
	cfg := ImageConfig{Env: []string{"A=1", "B=two words"}, WorkingDir: "/srv", User: "app:app"}
	child := Image{Name: "child", Kind: ImageBuilt, Path: "/x/child.qcow2", Format: FormatQcow2,
		Parent: "base", RecipeDigest: "sha256:ab", Config: cfg}
	if err := s.PutImage(ctx, child); err != nil {
		t.Fatal(err)
	}
	c1, err := s.GetImage(ctx, "child")
	if err != nil || c1.Parent != "base" || c1.RecipeDigest != "sha256:ab" || !reflect.DeepEqual(c1.Config, cfg) || c1.ID == got.ID {
		t.Fatalf("child: %+v %v", c1, err)
	}
	// New content under the same name: a new ID unless one is given.
	if err := s.PutImage(ctx, child); err != nil {
		t.Fatal(err)
	}
	if c2, _ := s.GetImage(ctx, "child"); c2.ID == c1.ID {
		t.Fatalf("re-put kept the ID %s", c2.ID)
	}
	c1.Config = ImageConfig{}
	if err := s.PutImage(ctx, c1); err != nil {
		t.Fatal(err)
	}
	if c3, _ := s.GetImage(ctx, "child"); c3.ID != c1.ID || !c3.Config.IsZero() {
		t.Fatalf("put with an ID and no config: %+v", c3)
	}
	if kids, err := s.ImageChildren(ctx, "base"); err != nil || !reflect.DeepEqual(kids, []string{"child"}) {
		t.Fatalf("children: %v %v", kids, err)
	}
	for _, vm := range []VM{{ID: "v2", Name: "zeta", State: "stopped", Image: "base"}, {ID: "v1", Name: "alpha", State: "stopped", Image: "base"}} {
		if err := s.InsertVM(ctx, vm); err != nil {
			t.Fatal(err)
		}
	}
	if users, err := s.ImageUsers(ctx, "base"); err != nil || !reflect.DeepEqual(users, []string{"alpha", "zeta"}) {
		t.Fatalf("users: %v %v", users, err)
	}
	if users, err := s.ImageUsers(ctx, "child"); err != nil || len(users) != 0 {
		t.Fatalf("users of an unused image: %v %v", users, err)
	}
}

// 0012: a snapshot round-trips; a taken name is a conflict; delete and
// an unknown name are as for other rows.
func TestMigration0012Snapshots(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	snap := Snapshot{Name: "s1", ID: "abc", VMName: "vm1", Image: "tiny", ImageID: "i1", Kernel: "k", CPUs: 1, MemoryMiB: 256,
		DiskBytes: 1 << 30, NetMode: "user", Accel: "tcg", Hypervisor: "QEMU 7.2", AgentHostKey: "ssh-ed25519 AAAA",
		Config: json.RawMessage(`{"ID":"x"}`), ImageConfig: ImageConfig{User: "app"}, CreatedAt: time.Unix(5, 0).UTC(), DiskFormat: FormatRaw}
	if err := s.InsertSnapshot(ctx, snap); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetSnapshot(ctx, "s1")
	if err != nil || !reflect.DeepEqual(got, snap) {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	snap.ID = "def"
	if err := s.InsertSnapshot(ctx, snap); !errors.Is(err, ErrConflict) {
		t.Fatalf("a taken name: %v", err)
	}
	if all, err := s.ListSnapshots(ctx); err != nil || len(all) != 1 {
		t.Fatalf("list: %+v %v", all, err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetSnapshot(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, "s1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete again: %v", err)
	}
}

// 0013: a snapshot's used_at is zero until touched, then round-trips;
// touching an unknown snapshot is ErrNotFound.
func TestMigration0013SnapshotUsedAt(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	if err := s.InsertSnapshot(ctx, Snapshot{Name: "s1", ID: "abc", Config: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSnapshot(ctx, "s1"); err != nil || !got.UsedAt.IsZero() {
		t.Fatalf("new snapshot: %+v %v", got, err)
	}
	at := time.Unix(7, 0).UTC()
	if err := s.TouchSnapshot(ctx, "s1", at); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetSnapshot(ctx, "s1"); err != nil || !got.UsedAt.Equal(at) {
		t.Fatalf("touched: %+v %v", got, err)
	}
	if err := s.TouchSnapshot(ctx, "nope", at); !errors.Is(err, ErrNotFound) {
		t.Fatalf("touch unknown: %v", err)
	}
}

// 0014: a snapshot's disk format is raw unless recorded (every snapshot
// before 0014 is flattened), qcow2 round-trips, and another is refused.
func TestMigration0014SnapshotDiskFormat(t *testing.T) {
	s, _ := openTest(t)
	ctx := context.Background()
	for name, format := range map[string]string{"s1": "", "s2": FormatQcow2} {
		if err := s.InsertSnapshot(ctx, Snapshot{Name: name, ID: name, Config: json.RawMessage(`{}`), DiskFormat: format}); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := s.GetSnapshot(ctx, "s1"); err != nil || got.DiskFormat != FormatRaw {
		t.Fatalf("unrecorded format: %q %v", got.DiskFormat, err)
	}
	if got, err := s.GetSnapshot(ctx, "s2"); err != nil || got.DiskFormat != FormatQcow2 {
		t.Fatalf("qcow2: %q %v", got.DiskFormat, err)
	}
	if err := s.InsertSnapshot(ctx, Snapshot{Name: "s3", ID: "s3", Config: json.RawMessage(`{}`), DiskFormat: "vmdk"}); err == nil {
		t.Fatal("a vmdk snapshot disk was recorded")
	}
}
