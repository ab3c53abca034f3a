// Package ring is a fixed-size byte ring keeping the newest bytes written
// to it: the scrollback of a session in the agent and its mirror in the
// daemon.
//
// Every byte ever written has an offset, counted from the ring's first
// write (or from where Reset put it), that never goes back: a reader that
// remembers the End it saw asks for what came after it with Since, and
// learns from the offset Since returns whether something in between was
// already overwritten. The daemon's mirror continues the agent's offsets
// (Reset), so both name a byte of a session's output the same way.
package ring

// Ring holds the newest Size bytes written to it. Not safe for concurrent
// use; its owner locks.
type Ring struct {
	buf   []byte
	start int   // index of the oldest byte
	n     int   // bytes held
	end   int64 // offset just past the newest byte
}

// New makes a ring of size bytes (at least one).
func New(size int) *Ring {
	if size < 1 {
		size = 1
	}
	return &Ring{buf: make([]byte, size)}
}

// Write appends p, forgetting the oldest bytes when full.
func (r *Ring) Write(p []byte) {
	r.end += int64(len(p))
	size := len(r.buf)
	if len(p) >= size {
		copy(r.buf, p[len(p)-size:])
		r.start, r.n = 0, size
		return
	}
	end := (r.start + r.n) % size
	k := copy(r.buf[end:], p)
	copy(r.buf, p[k:])
	r.n += len(p)
	if r.n > size {
		r.start = (r.start + r.n - size) % size
		r.n = size
	}
}

// Bytes returns a copy of what the ring holds, oldest first.
func (r *Ring) Bytes() []byte {
	b, _ := r.Since(0)
	return b
}

// End is the offset just past the newest byte: the number of bytes
// written since the ring began (or since the offset Reset gave).
func (r *Ring) End() int64 { return r.end }

// Start is the offset of the oldest byte the ring still holds.
func (r *Ring) Start() int64 { return r.end - int64(r.n) }

// Since returns a copy of the bytes from offset off on and the offset of
// the first of them: Start when off is older than what the ring holds
// (the bytes in between are gone), End and nothing when off is at or past
// the end.
func (r *Ring) Since(off int64) ([]byte, int64) {
	from := max(off, r.Start())
	if from >= r.end {
		return []byte{}, r.end
	}
	skip := int(from - r.Start())
	n := r.n - skip
	out := make([]byte, n)
	first := (r.start + skip) % len(r.buf)
	k := copy(out, r.buf[first:min(first+n, len(r.buf))])
	copy(out[k:], r.buf[:n-k])
	return out, from
}

// Reset empties the ring and makes off the offset of the next byte
// written, so a mirror continues the offsets of the ring it copies.
func (r *Ring) Reset(off int64) {
	r.start, r.n, r.end = 0, 0, max(off, 0)
}
