package consolelog

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A flood many times the bound leaves both parts within it, the newest
// output kept whole at the end.
func TestWriterStaysWithinBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	const bound = 1 << 20
	w, err := Create(path, bound)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100_000; i++ {
		if _, err := fmt.Fprintf(w, "line %06d AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n", i); err != nil {
			t.Fatal(err)
		}
		if i%10_000 == 0 {
			if n := Size(path); n > bound {
				t.Fatalf("after %d lines the log holds %d bytes, over %d", i, n, bound)
			}
		}
	}
	w.Close()
	if n := Size(path); n > bound || n < bound/2 {
		t.Fatalf("log holds %d bytes; want within %d and above half", n, bound)
	}
	if got := TailString(path, 2, 1<<10); !strings.HasPrefix(got, "line 099998 ") || !strings.Contains(got, "\nline 099999 ") {
		t.Fatalf("tail: %q", got)
	}
	// A burst larger than a part keeps its end.
	w, _ = Create(path, bound)
	big := bytes.Repeat([]byte("x"), bound)
	copy(big[len(big)-4:], "END\n")
	w.Write(big)
	w.Close()
	if n := Size(path); n > bound {
		t.Fatalf("after a burst: %d bytes", n)
	}
	if got := TailString(path, 1, 16); !strings.HasSuffix(got, "xEND") {
		t.Fatalf("burst tail: %q", got)
	}
	// A new boot starts empty.
	Remove(path)
	if n := Size(path); n != 0 {
		t.Fatalf("after Remove: %d", n)
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func backlog(t *testing.T, path string, n int) string {
	t.Helper()
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r.Backlog(n))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Tails count lines across the two parts, a final newline ends the last
// line, and a log without newlines gives its last MaxTail bytes.
func TestBacklogTails(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.log")
	writeFile(t, path+PrevSuffix, "a\nb\nc")
	writeFile(t, path, "c\nd\ne\n")
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, "a\nb\ncc\nd\ne\n"},
		{1, "e\n"},
		{2, "d\ne\n"},
		{3, "cc\nd\ne\n"},
		{4, "b\ncc\nd\ne\n"},
		{99, "a\nb\ncc\nd\ne\n"},
	} {
		if got := backlog(t, path, tc.n); got != tc.want {
			t.Errorf("backlog(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
	os.Remove(path + PrevSuffix)
	writeFile(t, path, "no newline at all")
	if got := backlog(t, path, 3); got != "no newline at all" {
		t.Errorf("one partial line: %q", got)
	}
	big := bytes.Repeat([]byte("y"), MaxTail+1000)
	if err := os.WriteFile(path, big, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := backlog(t, path, 3); len(got) != MaxTail {
		t.Errorf("a log without newlines: tail of %d bytes, want %d", len(got), MaxTail)
	}
	if got := TailString(filepath.Join(dir, "none"), 3, 100); !strings.HasPrefix(got, "(no console log:") {
		t.Errorf("missing log: %q", got)
	}
}

// The last lines of a large log (an unbounded one an older ember let QEMU
// write) cost one chunk of memory, not the log's size.
func TestBacklogMemoryBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("A", 99) + "\n")
	block := bytes.Repeat(line, 10_000) // 1 MB
	for i := 0; i < 100; i++ {
		f.Write(block)
	}
	f.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	got := backlog(t, path, 3)
	runtime.ReadMemStats(&after)
	if got != string(bytes.Repeat(line, 3)) {
		t.Fatalf("tail of a 100 MB log: %q", got)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 1<<20 {
		t.Fatalf("the tail of a 100 MB log allocated %d bytes", alloc)
	}
}

// A reader that follows sees everything written after its backlog, once
// and in order, across part changes.
func TestNextFollowsAcrossParts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	w, err := Create(path, MinBound)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(w, "before\n")
	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var got, want bytes.Buffer
	io.Copy(&got, r.Backlog(0))
	want.WriteString("before\n")
	for i := 0; i < 5000; i++ {
		line := fmt.Sprintf("line %d %s\n", i, strings.Repeat("z", i%50))
		w.Write([]byte(line))
		want.WriteString(line)
		if i%7 == 0 {
			if _, err := r.Next(&got); err != nil {
				t.Fatal(err)
			}
		}
	}
	w.Close()
	r.Next(&got)
	if got.String() != want.String() {
		t.Fatalf("followed %d bytes, want %d; first difference near byte %d", got.Len(), want.Len(), firstDiff(got.Bytes(), want.Bytes()))
	}
	if n := Size(path); n > MinBound {
		t.Fatalf("log holds %d bytes", n)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// Rotate keeps the last boot's output as the previous part (dropping the
// one before) and leaves no current part, so a new boot starts empty and
// a reader sees both boots in order; a log with no current part is left
// as it is.
func TestRotateKeepsTheLastBoot(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := os.WriteFile(path+PrevSuffix, []byte("older\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("boot 1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := Rotate(path); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("current part after Rotate: %v", err)
	}
	w, err := Create(path, MinBound)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("boot 2\n"))
	w.Close()
	if got := TailString(path, 10, 1<<20); got != "boot 1\nboot 2" {
		t.Fatalf("log after a rotate and a new boot: %q", got)
	}
	os.Remove(path)
	if err := Rotate(path); err != nil {
		t.Fatalf("Rotate with no current part: %v", err)
	}
	if b, _ := os.ReadFile(path + PrevSuffix); string(b) != "boot 1\n" {
		t.Fatalf("previous part after a Rotate with no current part: %q", b)
	}
}
