package treecopy

import (
	"encoding/binary"
	"errors"
	"io"
	"math"
	"sync/atomic"
)

// NameMeter stands between an SFTP client and the stream of its server's
// replies and counts the names they carry (SSH_FXP_NAME packets), as they
// arrive. sftp.Client.ReadDir gathers a whole folder before it returns,
// so Pack's MaxEntries would be checked only after a guest whose root
// replaced the agent's SFTP server had answered READDIR for ever: a
// listing past its bound (SFTPFS.ReadDir sets it) fails the reader
// instead, which ends the client and its listing with it.
type NameMeter struct {
	r     io.Reader
	names atomic.Int64
	limit atomic.Int64 // names at which Read fails
	over  atomic.Bool

	// The packet being read (one reader at a time: the client's).
	hdr  [13]byte // length, type, id, count
	got  int      // bytes of hdr read
	skip int64    // bytes of the packet left after its header
}

// sftpName is SSH_FXP_NAME, the reply that lists names.
const sftpName = 104

// errTooManyNames is the reader's error past its bound; SFTPFS.ReadDir
// says it as ErrInvalid.
var errTooManyNames = errors.New("the sftp server listed more names than a copy takes")

// NewNameMeter meters r, with no bound until one is set.
func NewNameMeter(r io.Reader) *NameMeter {
	m := &NameMeter{r: r}
	m.limit.Store(math.MaxInt64)
	return m
}

// bound lets at most n more names through; unbound lifts it.
func (m *NameMeter) bound(n int64) { m.limit.Store(m.names.Load() + n) }
func (m *NameMeter) unbound()      { m.limit.Store(math.MaxInt64) }

// exceeded says whether the bound failed the reader.
func (m *NameMeter) exceeded() bool { return m.over.Load() }

func (m *NameMeter) Read(p []byte) (int, error) {
	if m.over.Load() {
		return 0, errTooManyNames
	}
	n, err := m.r.Read(p)
	m.count(p[:n])
	if m.names.Load() > m.limit.Load() {
		m.over.Store(true)
		return 0, errTooManyNames
	}
	return n, err
}

// count follows the packets in b: a header's first 13 bytes (length,
// type, id and, for a NAME reply, its count), then the rest skipped.
func (m *NameMeter) count(b []byte) {
	for len(b) > 0 {
		if m.skip > 0 {
			k := int64(len(b))
			if k > m.skip {
				k = m.skip
			}
			m.skip -= k
			b = b[k:]
			continue
		}
		// Length and type first; the id and count only of a NAME reply
		// long enough to hold them, so no header runs into the next packet.
		want := 5
		if m.got >= 5 && m.hdr[4] == sftpName && binary.BigEndian.Uint32(m.hdr[:4]) >= 9 {
			want = len(m.hdr)
		}
		k := copy(m.hdr[m.got:want], b)
		m.got += k
		b = b[k:]
		if m.got < 5 {
			continue
		}
		length := int64(binary.BigEndian.Uint32(m.hdr[:4]))
		if m.hdr[4] == sftpName && length >= 9 {
			if m.got < len(m.hdr) {
				continue
			}
			m.names.Add(int64(binary.BigEndian.Uint32(m.hdr[9:13])))
			m.skip = length - 9
		} else {
			// Another reply (or a malformed NAME, which the client refuses).
			m.skip = max(length-int64(m.got-4), 0)
		}
		m.got = 0
	}
}
