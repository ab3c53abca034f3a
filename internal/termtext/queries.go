package termtext

import (
	"bytes"
	"io"
)

// Terminal queries.
//
// Some sequences make a terminal answer: it types the answer into its
// input as if the user had. A program asks on purpose (a shell's
// `ESC[6n` for the cursor position, an editor's `ESC]11;?` for the
// background colour) and reads the answer; but when the same bytes reach
// a terminal again later — a session's scrollback replayed on attach, or
// printed by `session read` — the answer goes to whoever reads the
// terminal's input then, the session's shell or the user's own, as typed
// garbage (`^[[6;14R`). StripQueries and QueryFilter remove exactly the
// sequences that make a terminal answer and keep everything else byte for
// byte, colours, cursor movement and the alternate screen included, so a
// replay looks the same and types nothing:
//
//   - CSI: DSR and CPR (`CSI [?] Ps n`), DA1/DA2/DA3 (`CSI [>=] Ps c`),
//     DECREQTPARM (`CSI Ps x`), the window reports of XTWINOPS
//     (`CSI 11/13/14/15/16/18/19/20/21 t`), DECRQM (`CSI [?] Ps $ p`),
//     XTVERSION (`CSI > q`), XTQMODKEYS (`CSI ? Pp m`), XTSMGRAPHICS
//     (`CSI ? ... S`), the kitty keyboard query (`CSI ? u`), DECRQTSR
//     (`CSI $ u`), DECRQPSR (`CSI $ w`), DECRQLP (`CSI ' |`), DECRQDE
//     (`CSI " v`), DECRQCRA (`CSI * y`);
//   - DCS: DECRQSS (`DCS $ q ... ST`) and XTGETTCAP (`DCS + q ... ST`);
//   - OSC: any whose parameters include a lone `?` (`OSC 4;1;?`,
//     `OSC 10;?` to `OSC 19;?`, `OSC 52;c;?`, ...);
//   - APC: a kitty graphics query (`APC G ...a=q... ST`);
//   - DECID (`ESC Z`) and ENQ (0x05, the answerback).
//
// The parser follows a terminal's (vt100.net/emu/dec_ansi_parser): C0
// controls inside a sequence are carried out where they stand (so they
// are kept), CAN and SUB abandon it, ESC starts a new one; C1 controls
// count in their 7-bit form and as UTF-8 code points (U+009B is CSI). A
// sequence the terminal would abandon is dropped, which shows the same.

// StripQueries returns p without the sequences that make a terminal
// answer (see above). A sequence p ends in the middle of is kept.
func StripQueries(p []byte) []byte {
	var q queryFilter
	out := q.feed(make([]byte, 0, len(p)), p)
	return q.flush(out)
}

// QueryFilter is a writer that removes terminal queries from what passes
// through it, as StripQueries would from the concatenation of everything
// written: a sequence split across writes is recognised. It holds back
// the bytes of an unfinished sequence until it knows what it is; Flush
// writes them.
type QueryFilter struct {
	w   io.Writer
	q   queryFilter
	out []byte
}

// NewQueryFilter returns a QueryFilter writing to w.
func NewQueryFilter(w io.Writer) *QueryFilter { return &QueryFilter{w: w} }

// Write filters p; it reports len(p) on success.
func (f *QueryFilter) Write(p []byte) (int, error) {
	f.out = f.q.feed(f.out[:0], p)
	if len(f.out) > 0 {
		if _, err := f.w.Write(f.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Flush writes the bytes of a sequence still held back.
func (f *QueryFilter) Flush() error {
	out := f.q.flush(nil)
	if len(out) > 0 {
		_, err := f.w.Write(out)
		return err
	}
	return nil
}

// maxHeld bounds the bytes of one sequence held back while it is parsed.
// Queries are short; a longer sequence (an OSC 52 clipboard copy, an
// image) is let through as it comes.
const maxHeld = 4 << 10

// The query filter's states.
const (
	qGround = iota
	qEsc    // after ESC
	qInter  // ESC and intermediate bytes
	qCSI    // a control sequence
	qStr    // OSC, DCS, SOS, PM or APC string
	qStrEsc // ESC inside a string: ST or the start of a new sequence
)

// queryFilter carries the parser's state between writes.
type queryFilter struct {
	state int
	held  []byte // the current sequence's bytes so far
	pass  bool   // the current sequence is too long to be a query: let it through
	lead  bool   // a 0xC2 byte was the last: a C1 control may follow
	str   byte   // the string's kind: ']' OSC, 'P' DCS, '_' APC, 'X' SOS, '^' PM
}

// flush appends what is held and resets the state.
func (q *queryFilter) flush(out []byte) []byte {
	out = append(out, q.held...)
	if q.state == qStrEsc {
		out = append(out, 0x1b)
	}
	if q.lead {
		out = append(out, 0xc2)
	}
	*q = queryFilter{held: q.held[:0]}
	return out
}

// feed appends the filtered p to out.
func (q *queryFilter) feed(out, p []byte) []byte {
	for i := 0; i < len(p); i++ {
		b := p[i]
		if q.lead {
			// 0xC2 then 0x80-0x9F is a C1 control as a UTF-8 code point.
			q.lead = false
			switch {
			case b >= 0x80 && b <= 0x9f:
				out = q.c1(out, b, []byte{0xc2, b})
				continue
			case b >= 0xa0 && b <= 0xbf:
				out = q.byte(out, 0xc2)
			default:
				// Not UTF-8, shown as U+FFFD: written so, it cannot join
				// a C1-like byte that dropping a sequence brings next to it.
				out = q.text(out, "\ufffd")
			}
		}
		if b == 0xc2 {
			q.lead = true
			continue
		}
		if b >= 0x80 && b <= 0x9f && q.state == qGround {
			// A raw C1 byte is not UTF-8; a UTF-8 terminal shows U+FFFD.
			out = append(out, b)
			continue
		}
		out = q.byte(out, b)
	}
	return out
}

// c1 handles a C1 control (b, encoded as enc) as its 7-bit form would be.
func (q *queryFilter) c1(out []byte, b byte, enc []byte) []byte {
	if q.state == qStrEsc {
		out = q.endByEsc(out)
	}
	switch b {
	case 0x9b, 0x90, 0x9d, 0x98, 0x9e, 0x9f: // CSI, DCS, OSC, SOS, PM, APC
		out = q.abandon(out)
		q.held = append(q.held, enc...)
		if b == 0x9b {
			q.state = qCSI
		} else {
			q.state, q.str = qStr, map[byte]byte{0x90: 'P', 0x9d: ']', 0x98: 'X', 0x9e: '^', 0x9f: '_'}[b]
		}
		return out
	case 0x9c: // ST
		if q.state == qStr || q.state == qStrEsc {
			q.held = append(q.held, enc...)
			return q.endString(out)
		}
	}
	if q.state != qGround && q.state != qStr {
		out = q.abandon(out)
	}
	if q.state == qStr {
		return q.hold(out, enc...)
	}
	return append(out, enc...)
}

// text feeds bytes that are text wherever they stand.
func (q *queryFilter) text(out []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		out = q.byte(out, s[i])
	}
	return out
}

// abandon ends the current sequence without a decision. A terminal
// discards an abandoned sequence, so its bytes go nowhere: kept, they
// could join what follows a query removed after them into a new one.
func (q *queryFilter) abandon(out []byte) []byte {
	q.held, q.pass, q.state = q.held[:0], false, qGround
	return out
}

// hold adds bytes to the current sequence, or lets them through once it
// is too long to be a query.
func (q *queryFilter) hold(out []byte, bs ...byte) []byte {
	if q.pass {
		return append(out, bs...)
	}
	q.held = append(q.held, bs...)
	if len(q.held) > maxHeld {
		out = append(out, q.held...)
		q.held, q.pass = q.held[:0], true
	}
	return out
}

// done ends the current sequence: dropped when it is a query.
func (q *queryFilter) done(out []byte, query bool) []byte {
	if !query || q.pass {
		out = append(out, q.held...)
	}
	q.held, q.pass, q.state = q.held[:0], false, qGround
	return out
}

// byte feeds one byte that is not a C1 control.
func (q *queryFilter) byte(out []byte, b byte) []byte {
	const esc, can, sub, bel, enq = 0x1b, 0x18, 0x1a, 0x07, 0x05
	switch q.state {
	case qGround:
		switch b {
		case esc:
			q.held, q.state = append(q.held, b), qEsc
			return out
		case enq:
			return out
		}
		return append(out, b)
	case qStr:
		switch {
		case b == esc:
			// Held apart until the next byte says whether it is ST.
			q.state = qStrEsc
			return out
		case b == bel:
			out = q.hold(out, b)
			return q.endString(out)
		case b == can || b == sub:
			return append(q.abandon(out), b)
		}
		return q.hold(out, b)
	case qStrEsc:
		if b == '\\' {
			out = q.hold(out, esc, b)
			return q.endString(out)
		}
		// ESC ended the string and starts a new sequence.
		out = q.endByEsc(out)
		return q.byte(out, b)
	}
	// In ESC, intermediate and CSI states.
	switch {
	case b == esc:
		out = q.abandon(out)
		q.held, q.state = append(q.held, b), qEsc
		return out
	case b == can || b == sub:
		return append(q.abandon(out), b)
	case b == enq:
		return out
	case b < 0x20:
		return append(out, b) // carried out where it stands
	case b >= 0x7f:
		if b == 0x7f {
			return out // DEL is ignored inside a sequence
		}
		return append(q.abandon(out), b)
	}
	switch q.state {
	case qEsc:
		switch {
		case b == '[':
			q.state = qCSI
			return q.hold(out, b)
		case b == ']' || b == 'P' || b == 'X' || b == '^' || b == '_':
			q.state, q.str = qStr, b
			return q.hold(out, b)
		case b >= 0x20 && b <= 0x2f:
			q.state = qInter
			return q.hold(out, b)
		}
		out = q.hold(out, b)
		return q.done(out, b == 'Z') // DECID
	case qInter:
		out = q.hold(out, b)
		if b >= 0x30 {
			return q.done(out, false)
		}
		return out
	}
	// qCSI
	out = q.hold(out, b)
	if b >= 0x40 {
		return q.done(out, !q.pass && csiQuery(q.held))
	}
	return out
}

// endByEsc ends a string at an ESC that is not ST, and begins the
// sequence that ESC starts. A string that is kept gets a proper ST: the
// sequence after it may be dropped, and without it the string would run
// on into what follows.
func (q *queryFilter) endByEsc(out []byte) []byte {
	if !q.pass && stringQuery(q.str, q.held) {
		q.held, q.state = q.held[:0], qGround
	} else {
		out = append(q.done(out, false), 0x1b, '\\')
	}
	q.held, q.state = append(q.held, 0x1b), qEsc
	return out
}

// endString ends an OSC, DCS, SOS, PM or APC string: dropped when it is a
// query.
func (q *queryFilter) endString(out []byte) []byte {
	return q.done(out, !q.pass && stringQuery(q.str, q.held))
}

// csiQuery says whether a whole control sequence (introducer included)
// makes a terminal answer.
func csiQuery(seq []byte) bool {
	seq = seq[2:] // the introducer: ESC [ or the UTF-8 C1 CSI
	final := seq[len(seq)-1]
	body := seq[:len(seq)-1]
	i := 0
	for i < len(body) && body[i] >= 0x30 && body[i] <= 0x3f {
		i++
	}
	params, inter := body[:i], string(body[i:])
	var prefix byte
	if len(params) > 0 && params[0] >= '<' && params[0] <= '?' {
		prefix, params = params[0], params[1:]
	}
	switch inter {
	case "":
		switch final {
		case 'n':
			return prefix == 0 || prefix == '?'
		case 'c':
			return prefix == 0 || prefix == '>' || prefix == '='
		case 'x':
			return prefix == 0
		case 't':
			first, _, _ := bytes.Cut(params, []byte(";"))
			switch string(first) {
			case "11", "13", "14", "15", "16", "18", "19", "20", "21":
				return prefix == 0
			}
		case 'q':
			return prefix == '>'
		case 'u', 'm', 'S':
			return prefix == '?'
		}
	case "$":
		return final == 'p' || final == 'u' || final == 'w'
	case "'":
		return final == '|'
	case `"`:
		return final == 'v'
	case "*":
		return final == 'y'
	}
	return false
}

// stringQuery says whether a whole OSC, DCS or APC string (introducer and
// terminator included) makes a terminal answer.
func stringQuery(kind byte, seq []byte) bool {
	// Strip the introducer (ESC x or a 2-byte C1) and the terminator
	// (BEL, ESC \ or a 2-byte C1 ST).
	body := seq[2:]
	switch {
	case bytes.HasSuffix(body, []byte{0x1b, '\\'}), bytes.HasSuffix(body, []byte{0xc2, 0x9c}):
		body = body[:len(body)-2]
	case bytes.HasSuffix(body, []byte{0x07}):
		body = body[:len(body)-1]
	}
	switch kind {
	case ']':
		for _, f := range bytes.Split(body, []byte(";")) {
			if string(f) == "?" {
				return true
			}
		}
	case 'P':
		i := 0
		for i < len(body) && body[i] >= 0x30 && body[i] <= 0x3f {
			i++
		}
		rest := body[i:]
		return bytes.HasPrefix(rest, []byte("$q")) || bytes.HasPrefix(rest, []byte("+q"))
	case '_':
		if len(body) > 0 && body[0] == 'G' {
			ctl, _, _ := bytes.Cut(body[1:], []byte(";"))
			for _, kv := range bytes.Split(ctl, []byte(",")) {
				if string(kv) == "a=q" {
					return true
				}
			}
		}
	}
	return false
}

// OnlyAnswers says whether p is nothing but what a terminal types when
// it answers a query: cursor position reports (CSI r;c R), status and
// device attribute reports (CSI 0 n, CSI ? ... c, CSI > ... c, DCS ! | ...),
// mode reports (CSI ? ... $ y), window reports (CSI 1..9 ; ... t, OSC l/L),
// setting reports (DCS 0/1 $ r, DCS 0/1 + r, DCS > | ...), colour and
// clipboard reports (OSC 4/5/10-19/52 ; ...), kitty keyboard and
// modifyOtherKeys reports (CSI ? ... u, CSI > ... m), DECREPTPARM
// (CSI 2/3 ; ... x). A session with several terminals attached gets one
// answer per terminal to a query; the daemon keeps only the active one's.
// (Shift-F3 on some terminals is CSI 1;2 R, the shape of a cursor
// report: from a terminal that is not the active one it would be lost.)
func OnlyAnswers(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	for len(p) > 0 {
		n := answerLen(p)
		if n == 0 {
			return false
		}
		p = p[n:]
	}
	return true
}

// answerLen is the length of the answer p starts with, 0 if it starts
// with none.
func answerLen(p []byte) int {
	if len(p) < 3 || p[0] != 0x1b {
		return 0
	}
	switch p[1] {
	case '[':
		i := 2
		for i < len(p) && p[i] >= 0x20 && p[i] <= 0x3f {
			i++
		}
		if i >= len(p) || p[i] < 0x40 || p[i] > 0x7e {
			return 0
		}
		body, final := p[2:i], p[i]
		prefix := byte(0)
		if len(body) > 0 && body[0] >= '<' && body[0] <= '?' {
			prefix, body = body[0], body[1:]
		}
		first, _, _ := bytes.Cut(body, []byte(";"))
		ok := false
		switch final {
		case 'R':
			ok = (prefix == 0 || prefix == '?') && bytes.Count(body, []byte(";")) >= 1
		case 'n':
			ok = prefix == 0 && (string(body) == "0" || string(body) == "3")
		case 'c':
			ok = prefix == '?' || prefix == '>'
		case 'y':
			ok = bytes.HasSuffix(body, []byte("$"))
		case 't':
			ok = prefix == 0 && len(first) == 1 && first[0] >= '1' && first[0] <= '9'
		case 'u':
			ok = prefix == '?'
		case 'm':
			ok = prefix == '>'
		case 'x':
			ok = prefix == 0 && (string(first) == "2" || string(first) == "3")
		}
		if !ok {
			return 0
		}
		return i + 1
	case ']', 'P':
		end := -1
		for i := 2; i < len(p); i++ {
			if p[i] == 0x07 {
				end = i + 1
				break
			}
			if p[i] == 0x1b && i+1 < len(p) && p[i+1] == '\\' {
				end = i + 2
				break
			}
		}
		if end < 0 {
			return 0
		}
		body := p[2:end]
		if p[1] == ']' {
			num, _, _ := bytes.Cut(body, []byte(";"))
			switch string(num) {
			case "4", "5", "10", "11", "12", "13", "14", "15", "16", "17", "18", "19", "52":
				return end
			}
			if len(body) > 0 && (body[0] == 'l' || body[0] == 'L') {
				return end
			}
			return 0
		}
		for _, pre := range []string{"0$r", "1$r", "0+r", "1+r", ">|", "!|"} {
			if bytes.HasPrefix(body, []byte(pre)) {
				return end
			}
		}
	}
	return 0
}
