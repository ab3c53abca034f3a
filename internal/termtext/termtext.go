// Package termtext makes untrusted text safe to print on a terminal.
//
// Text that a guest wrote (its console, its agent's messages, the commands
// of its sessions) and names kept in the store reach the user's terminal
// through ember's CLI. A terminal obeys escape sequences in that text:
// they can set the window title, clear the screen, move the cursor over
// what was printed before, or, on some terminals, answer back into the
// input. Clean and Writer keep plain text, newlines and tabs and drop
// everything else that a terminal would act on:
//
//   - escape sequences, whole: CSI (ESC [ ... final byte), OSC, DCS, SOS,
//     PM and APC strings (ESC ] ... BEL or ESC \), and the short ESC
//     sequences (ESC 7, ESC ( B, ESC c, ...), in their 7-bit and C1 forms;
//   - every other C0 control but newline and tab (so carriage return and
//     backspace, which overprint what was shown), DEL and the C1 controls;
//   - Unicode bidirectional overrides and isolates, which reorder what is
//     shown against what is there.
//
// Bytes that are not UTF-8 become U+FFFD, so the output is always valid
// UTF-8. A string sequence (OSC and the like) that is never terminated ends
// at the next newline, so one bad sequence hides at most one line.
//
// Streams of `exec -t` and session attach are not filtered: there the
// terminal is the guest program's own. Only output that reaches a terminal
// a second time (a session's replayed scrollback), or one whose input is
// not the client's (an attach with piped stdin), loses what would make the
// terminal answer into its input: StripQueries (queries.go). An attach
// whose output is not a terminal gets text (Writer).
package termtext

import (
	"io"
	"unicode/utf8"
)

// Clean returns s with escape sequences and control characters removed
// (see the package comment).
func Clean(s string) string {
	if safe(s) {
		return s
	}
	var f filter
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		out = f.rune(out, r)
		i += n
	}
	return string(out)
}

// safe reports whether s is printable text already, which is the common
// case and needs no copy.
func safe(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || bidi(r) {
			return false
		}
	}
	return true
}

// Writer cleans what is written through it, as Clean would the
// concatenation of everything written: an escape sequence or a UTF-8
// character split across two writes is recognised. Close flushes the
// bytes of an unfinished character (as U+FFFD); it does not close the
// underlying writer.
type Writer struct {
	w       io.Writer
	f       filter
	pending []byte // the start of a character the last write split
	out     []byte
}

// NewWriter returns a Writer that writes clean text to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write cleans p and writes the result; it reports len(p) on success,
// whatever the number of bytes that remained.
func (w *Writer) Write(p []byte) (int, error) {
	data := p
	if len(w.pending) > 0 {
		data = append(append([]byte(nil), w.pending...), p...)
		w.pending = w.pending[:0]
	}
	out := w.out[:0]
	for i := 0; i < len(data); {
		if !utf8.FullRune(data[i:]) {
			w.pending = append(w.pending, data[i:]...)
			break
		}
		r, n := utf8.DecodeRune(data[i:])
		out = w.f.rune(out, r)
		i += n
	}
	w.out = out
	if len(out) > 0 {
		if _, err := w.w.Write(out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Close writes what an unfinished character left, as Clean would at the
// end of its input.
func (w *Writer) Close() error {
	var out []byte
	for i := 0; i < len(w.pending); {
		r, n := utf8.DecodeRune(w.pending[i:])
		out = w.f.rune(out, r)
		i += n
	}
	w.pending = w.pending[:0]
	if len(out) > 0 {
		_, err := w.w.Write(out)
		return err
	}
	return nil
}

// The filter's states, after the DEC parser that terminals implement
// (vt100.net/emu/dec_ansi_parser), reduced to what decides where a
// sequence ends.
const (
	ground   = iota
	esc      // after ESC
	escInter // ESC and intermediate bytes (0x20-0x2f)
	csi      // a control sequence: parameters, intermediates, final byte
	str      // OSC, DCS, SOS, PM or APC string, up to BEL or ST
)

const (
	escByte = 0x1b
	bel     = 0x07
	c1CSI   = 0x9b
	c1ST    = 0x9c
)

// filter is the state carried between characters.
type filter struct{ state int }

// rune feeds one character and appends what it lets through to out.
func (f *filter) rune(out []byte, r rune) []byte {
	for {
		switch f.state {
		case esc:
			switch {
			case r == '[':
				f.state = csi
			case r == ']' || r == 'P' || r == 'X' || r == '^' || r == '_':
				f.state = str
			case r == escByte:
			case r >= 0x20 && r <= 0x2f:
				f.state = escInter
			case r >= 0x30 && r <= 0x7e:
				f.state = ground
			default:
				f.state = ground
				continue // not a sequence: the character stands alone
			}
			return out
		case escInter:
			switch {
			case r >= 0x20 && r <= 0x2f:
			case r >= 0x30 && r <= 0x7e:
				f.state = ground
			default:
				f.state = ground
				continue
			}
			return out
		case csi:
			switch {
			case r >= 0x20 && r <= 0x3f:
			case r >= 0x40 && r <= 0x7e:
				f.state = ground
			default:
				f.state = ground
				continue
			}
			return out
		case str:
			switch r {
			case bel, c1ST:
				f.state = ground
			case escByte:
				// ESC ends the string; ESC \ is its proper terminator,
				// anything else starts a new sequence.
				f.state = esc
			case '\n':
				f.state = ground
				continue
			}
			return out
		}
		// ground
		switch {
		case r == '\n' || r == '\t':
		case r == escByte:
			f.state = esc
			return out
		case r == c1CSI:
			f.state = csi
			return out
		case r == 0x90 || r == 0x98 || r == 0x9d || r == 0x9e || r == 0x9f:
			f.state = str
			return out
		case r < 0x20 || (r >= 0x7f && r <= 0x9f) || bidi(r):
			return out
		}
		return utf8.AppendRune(out, r)
	}
}

// bidi reports the Unicode bidirectional embedding, override and isolate
// controls.
func bidi(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f || r == 0x061c
}
