// Package consolelog keeps a VM's serial console on disk within a size
// bound and reads it back from the end. A guest can print as fast as its
// emulated serial port goes (about 0.8 MB/s under TCG), for as long as it
// runs, so neither the log nor a reader of it may grow with what it
// printed.
//
// A log is two parts: the current one, at the path the caller names
// (console.log), and the previous one beside it (console.log.1). The
// Writer starts a new current part, renaming the old one to the previous,
// when the current part would pass half the bound, so both together stay
// within it and the newest output is always kept. A Reader finds the last
// lines by scanning backwards in fixed-size chunks, so its memory does not
// depend on the log's size, and follows the log across part changes.
package consolelog

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// PrevSuffix is added to a log's path to name its previous part.
const PrevSuffix = ".1"

// MinBound is the smallest bound a Writer takes.
const MinBound = 64 << 10

// Writer appends to a log, keeping it within its bound. It is not safe for
// concurrent use: one goroutine writes a log.
type Writer struct {
	path string
	part int64 // the bound of one part: half the log's
	f    *os.File
	size int64
}

// Create opens the log at path for appending, creating it if needed; what
// it holds already counts toward the bound.
func Create(path string, bound int64) (*Writer, error) {
	if bound < MinBound {
		return nil, fmt.Errorf("console log bound of %d bytes is below the minimum of %d", bound, MinBound)
	}
	w := &Writer{path: path, part: bound / 2}
	if err := w.open(); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *Writer) open() error {
	f, err := os.OpenFile(w.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW, 0o640)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("console log: %w", err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

// Write appends p, first starting a new part when p would take the
// current one past its bound. Of a p larger than a part only its end is
// kept. It reports all of p written unless the file system fails.
func (w *Writer) Write(p []byte) (int, error) {
	n := len(p)
	if int64(len(p)) > w.part {
		p = p[int64(len(p))-w.part:]
	}
	if w.size > 0 && w.size+int64(len(p)) > w.part {
		if err := w.rotate(); err != nil {
			return 0, err
		}
	}
	if w.f == nil {
		if err := w.open(); err != nil {
			return 0, err
		}
	}
	m, err := w.f.Write(p)
	w.size += int64(m)
	if err != nil {
		return 0, fmt.Errorf("console log: %w", err)
	}
	return n, nil
}

// rotate makes the current part the previous one and starts a new one.
func (w *Writer) rotate() error {
	if w.f != nil {
		w.f.Close()
		w.f = nil
	}
	if err := os.Rename(w.path, w.path+PrevSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("console log: %w", err)
	}
	return w.open()
}

// Close closes the log.
func (w *Writer) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// Remove removes both parts of the log at path (a new boot's log starts
// empty).
func Remove(path string) {
	_ = os.Remove(path + PrevSuffix)
	_ = os.Remove(path)
}

// Rotate makes the current part of the log at path its previous part, in
// place of the one before, so a new boot starts an empty current part
// while the last boot's output stays readable (a guest's reboot). It is
// for when no Writer has the log open.
func Rotate(path string) error {
	if err := os.Rename(path, path+PrevSuffix); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("console log: %w", err)
	}
	return nil
}

// Size is the size of both parts of the log at path.
func Size(path string) int64 {
	var n int64
	for _, p := range []string{path + PrevSuffix, path} {
		if st, err := os.Stat(p); err == nil {
			n += st.Size()
		}
	}
	return n
}

// chunk is how much a backwards scan reads at once.
const chunk = 64 << 10

// MaxTail bounds what a tail returns, however few newlines the log has:
// the last lines of a log with none are its last MaxTail bytes.
const MaxTail = 8 << 20

// Reader reads a log: its backlog (all of it, or its last lines), then
// what is written after, across part changes.
type Reader struct {
	path string
	prev *os.File // the previous part as Open found it; nil when none
	cur  *os.File // the current part; Next reads on from its offset
	log  joined   // prev then cur, as long as they were at Open
}

// Open opens the log at path; os.ErrNotExist when it has no current part.
func Open(path string) (*Reader, error) {
	cur, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	r := &Reader{path: path, cur: cur}
	// The previous part first: a rotation between the two opens leaves
	// the previous part one step newer, never a gap.
	if prev, err := os.Open(path + PrevSuffix); err == nil {
		if same(prev, cur) { // rotated in between: cur is now the previous part
			prev.Close()
		} else {
			r.prev = prev
		}
	}
	if r.log, err = newJoined(r.prev, cur); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

func same(a, b *os.File) bool {
	sa, err1 := a.Stat()
	sb, err2 := b.Stat()
	return err1 == nil && err2 == nil && os.SameFile(sa, sb)
}

// Backlog returns the log as it was at Open: its last n lines when n > 0
// (at most MaxTail bytes), all of it otherwise. Reading it takes memory
// for one chunk, whatever the log's size. Next then reads on from there.
func (r *Reader) Backlog(n int) *io.SectionReader {
	total := r.log.size()
	start := int64(0)
	if n > 0 {
		start = tailStart(&r.log, total, n)
	}
	_, _ = r.cur.Seek(r.log.curSize, io.SeekStart)
	return io.NewSectionReader(&r.log, start, total-start)
}

// Next copies to w what was written since the last read, following the
// log into a new part when the writer started one (the rest of the old
// part first), and returns the bytes copied.
func (r *Reader) Next(w io.Writer) (int64, error) {
	n, err := io.Copy(w, r.cur)
	if err != nil {
		return n, err
	}
	now, err := os.Stat(r.path)
	cur, err2 := r.cur.Stat()
	if err != nil || err2 != nil || os.SameFile(now, cur) {
		return n, nil
	}
	// A new part (or a new boot's log): finish the old, then read the new
	// from its start.
	m, err := io.Copy(w, r.cur)
	n += m
	if err != nil {
		return n, err
	}
	nf, err := os.Open(r.path)
	if err != nil {
		return n, nil // between remove and create; next time
	}
	r.cur.Close()
	r.cur = nf
	m, err = io.Copy(w, r.cur)
	return n + m, err
}

// Close releases the log's files.
func (r *Reader) Close() error {
	if r.prev != nil {
		r.prev.Close()
	}
	return r.cur.Close()
}

// TailString is the last n lines of the log at path, at most their last
// max bytes, for a message (a failed boot's last console lines).
func TailString(path string, n int, max int64) string {
	r, err := Open(path)
	if err != nil {
		return "(no console log: " + err.Error() + ")"
	}
	defer r.Close()
	sr := r.Backlog(n)
	if skip := sr.Size() - max; skip > 0 {
		_, _ = sr.Seek(skip, io.SeekStart)
	}
	b, _ := io.ReadAll(sr)
	return string(bytes.TrimRight(b, "\n"))
}

// tailStart is where the last n lines of the first total bytes of f
// start: the log is scanned backwards chunk by chunk, and never further
// back than MaxTail bytes. A newline that ends the log ends its last line;
// it does not start an empty one.
func tailStart(f io.ReaderAt, total int64, n int) int64 {
	floor := max(0, total-MaxTail)
	end := total
	if end > floor {
		var last [1]byte
		if _, err := f.ReadAt(last[:], end-1); err == nil && last[0] == '\n' {
			end--
		}
	}
	buf := make([]byte, chunk)
	for pos := end; pos > floor; {
		size := min(int64(chunk), pos-floor)
		pos -= size
		b := buf[:size]
		if _, err := f.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
			return pos
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] == '\n' {
				if n--; n == 0 {
					return pos + int64(i) + 1
				}
			}
		}
	}
	return floor
}

// joined reads the previous part and the current one as one file, each
// as long as it was when joined.
type joined struct {
	prev, cur         *os.File
	prevSize, curSize int64
}

func newJoined(prev, cur *os.File) (joined, error) {
	j := joined{prev: prev, cur: cur}
	if prev != nil {
		st, err := prev.Stat()
		if err != nil {
			return j, err
		}
		j.prevSize = st.Size()
	}
	st, err := cur.Stat()
	if err != nil {
		return j, err
	}
	j.curSize = st.Size()
	return j, nil
}

func (j *joined) size() int64 { return j.prevSize + j.curSize }

func (j *joined) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for len(p) > 0 {
		switch {
		case off < j.prevSize:
			m, err := j.prev.ReadAt(p[:min(int64(len(p)), j.prevSize-off)], off)
			n, off, p = n+m, off+int64(m), p[m:]
			if err != nil && !errors.Is(err, io.EOF) {
				return n, err
			}
			if m == 0 {
				return n, io.ErrUnexpectedEOF
			}
		case off < j.size():
			m, err := j.cur.ReadAt(p[:min(int64(len(p)), j.size()-off)], off-j.prevSize)
			n, off, p = n+m, off+int64(m), p[m:]
			if err != nil && !errors.Is(err, io.EOF) {
				return n, err
			}
			if m == 0 {
				return n, io.ErrUnexpectedEOF
			}
		default:
			return n, io.EOF
		}
	}
	return n, nil
}
