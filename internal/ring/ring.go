// Package ring is a fixed-size byte ring keeping the newest bytes written
// to it: the scrollback of a session in the agent and its mirror in the
// daemon.
package ring

// Ring holds the newest Size bytes written to it. Not safe for concurrent
// use; its owner locks.
type Ring struct {
	buf   []byte
	start int // index of the oldest byte
	n     int // bytes held
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
	out := make([]byte, r.n)
	k := copy(out, r.buf[r.start:min(r.start+r.n, len(r.buf))])
	copy(out[k:], r.buf[:r.n-k])
	return out
}
