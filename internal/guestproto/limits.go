package guestproto

// Limits. Both sides check them: the client before it sends, the agent when
// it receives, and the client again on every reply, because a guest's bytes
// are untrusted. They are sized so that an honest agent's largest reply fits
// (TestLimitsFitWorstCase builds it).
const (
	// MaxNameLen bounds a session name (see ValidSessionName).
	MaxNameLen = 64

	// MaxSessions is how many sessions one agent keeps at once; a create
	// beyond it is refused, and a list reply with more is invalid.
	MaxSessions = 256

	// MaxSessionArgs and MaxSessionArgvBytes bound a session's command:
	// its argument count and the sum of their lengths. A session's argv
	// comes back in every list reply, so it is kept short; exec has the
	// larger MaxExecPayload.
	MaxSessionArgs      = 256
	MaxSessionArgvBytes = 4 << 10

	// MaxTermLen bounds a TERM value.
	MaxTermLen = 64

	// MaxTermDim bounds terminal rows and columns: the kernel's winsize
	// holds 16 bits.
	MaxTermDim = 1<<16 - 1

	// MaxRequestSize bounds a session request's JSON (the channel-open
	// data), environment included.
	MaxRequestSize = 64 << 10

	// MaxExecPayload bounds an exec command, ExecPrefix included. The SSH
	// library drops the whole connection on a packet over 256 KiB, so a
	// larger request is refused before it is sent.
	MaxExecPayload = 128 << 10

	// MaxReplyLine bounds the first line of a session reply. The largest
	// honest one is a list of MaxSessions sessions whose argv is all
	// characters JSON escapes six-fold: about 6.5 MiB.
	MaxReplyLine = 8 << 20

	// DefaultScrollback and MaxScrollback bound a session's scrollback
	// ring, in bytes; a read reply carries at most that many bytes.
	DefaultScrollback = 1 << 20
	MaxScrollback     = 64 << 20

	// MaxExitStatus is the largest exit status: statuses are a byte (128+N
	// for signal N).
	MaxExitStatus = 255
)
