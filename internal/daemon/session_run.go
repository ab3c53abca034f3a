package daemon

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"regexp"
	"strconv"
	"strings"

	"github.com/emberhq/ember/internal/termtext"
	"github.com/emberhq/ember/internal/wire"
)

// session.run and session.wait: sessions for scripts and agents.
//
// run types a command into the session's shell and reads its output back
// until a marker the shell prints after it, with the status. The typed
// line is
//
//	^U printf '%s%s\n' __EMBER_B TOKEN; eval 'CMD'; printf '%s%s %d\n' __EMBER_E TOKEN "$?"⏎
//
// ^U clears whatever was half typed at the prompt; eval runs CMD as the
// shell would (several commands, pipes, quotes) and leaves its status in
// $?. The shell echoes the line as it is typed, but the echo holds
// "__EMBER_B TOKEN" with a space, never the marker "__EMBER_BTOKEN" that
// only printf makes, so the output between the two markers is the
// command's, whatever the shell's echo, prompt or line editing printed
// around it. TOKEN is random per run, so an earlier run's markers in the
// output (or in a replay) never match. The leading space keeps the line
// out of bash's history (HISTCONTROL=ignorespace).
//
// Limits: the session must be at the prompt of a POSIX shell (a program
// reading its input gets the line instead, and run waits until the
// caller gives up); the line goes through the shell's line editor, which
// may bound it (busybox's keeps about 1 KiB); a command that reads input
// reads the terminal; `exit` in CMD ends the shell, and run with it
// (conflict). The output is the terminal's: the guest's line discipline
// turns \n into \r\n, and programs that see a terminal may colour it.
//
// wait reads the session's output as text (termtext.Clean: escape
// sequences and control characters other than \n and \t removed) until a
// regular expression matches it.

// runMarkers are the marker prefixes; the token follows each.
const (
	runBegin = "__EMBER_B"
	runEnd   = "__EMBER_E"
)

// runToken is a fresh random token.
func runToken() (string, error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

// runLine is what run types for cmd.
func runLine(cmd, tok string) string {
	quoted := "'" + strings.ReplaceAll(cmd, "'", `'\''`) + "'"
	return "\x15 printf '%s%s\\n' " + runBegin + " " + tok + "; eval " + quoted +
		"; printf '%s%s %d\\n' " + runEnd + " " + tok + ` "$?"` + "\r"
}

// runScanner finds a run's output between its markers in the session's
// output, fed in pieces as they come.
type runScanner struct {
	begin, end []byte
	started    bool
	held       []byte // bytes that may start a marker, or a begin line not yet ended
}

func newRunScanner(tok string) *runScanner {
	return &runScanner{begin: []byte(runBegin + tok), end: []byte(runEnd + tok)}
}

// feed takes the next output p. It returns the command's output found in
// it, and once the end marker's line is complete: done, the command's
// status, and how many bytes of p run up to the end of that line.
func (r *runScanner) feed(p []byte) (out []byte, done bool, code int, used int) {
	buf := append(r.held, p...)
	before := len(r.held) // bytes of buf from earlier calls
	r.held = nil
	if !r.started {
		i := bytes.Index(buf, r.begin)
		if i < 0 {
			r.held = append([]byte(nil), buf[max(0, len(buf)-len(r.begin)):]...)
			return nil, false, 0, 0
		}
		nl := bytes.IndexByte(buf[i+len(r.begin):], '\n')
		if nl < 0 {
			r.held = append([]byte(nil), buf[i:]...)
			return nil, false, 0, 0
		}
		r.started = true
		buf = buf[i+len(r.begin)+nl+1:]
		before = 0
		// What preceded is the echo: p's bytes up to here are not
		// output. used counts from the start of p, so keep the count.
		return r.afterBegin(buf, len(p)-len(buf))
	}
	return r.scan(buf, before)
}

// afterBegin scans what followed the begin line in the same piece; skip
// is how many bytes of that piece came before it.
func (r *runScanner) afterBegin(buf []byte, skip int) ([]byte, bool, int, int) {
	out, done, code, used := r.scan(buf, 0)
	if done {
		used += skip
	}
	return out, done, code, used
}

// scan looks for the end marker in buf, whose first before bytes were
// held from earlier pieces.
func (r *runScanner) scan(buf []byte, before int) (out []byte, done bool, code int, used int) {
	from := 0
	for {
		i := bytes.Index(buf[from:], r.end)
		if i < 0 {
			break
		}
		i += from
		rest := buf[i+len(r.end):]
		status, n, complete, ok := parseStatusLine(rest)
		switch {
		case !ok:
			from = i + 1 // not the marker's line: output that looks like it
			continue
		case !complete:
			r.held = append([]byte(nil), buf[i:]...)
			return append([]byte(nil), buf[:i]...), false, 0, 0
		}
		return append([]byte(nil), buf[:i]...), true, status, i + len(r.end) + n - before
	}
	// Hold back a tail that may be the start of the end marker.
	keep := 0
	for k := min(len(r.end)-1, len(buf)); k > 0; k-- {
		if bytes.HasSuffix(buf, r.end[:k]) {
			keep = k
			break
		}
	}
	r.held = append([]byte(nil), buf[len(buf)-keep:]...)
	return append([]byte(nil), buf[:len(buf)-keep]...), false, 0, 0
}

// parseStatusLine reads " STATUS\r\n" (or \n): the status, the bytes the
// line takes, whether it is all there, and whether it can be one.
func parseStatusLine(b []byte) (status, n int, complete, ok bool) {
	if len(b) == 0 {
		return 0, 0, false, true
	}
	if b[0] != ' ' {
		return 0, 0, false, false
	}
	digit := func(c byte) bool { return c >= '0' && c <= '9' }
	i := 1
	for i < len(b) && i < 4 && digit(b[i]) {
		i++
	}
	if i == len(b) {
		return 0, 0, false, true
	}
	if i == 1 || digit(b[i]) {
		return 0, 0, false, false // no status, or more than 3 digits
	}
	status, _ = strconv.Atoi(string(b[1:i]))
	if b[i] == '\r' {
		i++
		if i == len(b) {
			return 0, 0, false, true
		}
	}
	if b[i] != '\n' {
		return 0, 0, false, false
	}
	return min(status, 255), i + 1, true, true
}

// rest is output held back when the session ended before the end marker.
func (r *runScanner) rest() []byte {
	if !r.started {
		return nil
	}
	return r.held
}

// waitTextLimit bounds the text wait keeps to match against: the newest
// part of it.
const waitTextLimit = 1 << 20

// waitScanner matches a regular expression against a session's output as
// text, fed in pieces.
type waitScanner struct {
	re    *regexp.Regexp
	text  bytes.Buffer
	clean *termtext.Writer
}

func newWaitScanner(re *regexp.Regexp) *waitScanner {
	w := &waitScanner{re: re}
	w.clean = termtext.NewWriter(&w.text)
	return w
}

// feed adds output and returns the first match in the text so far.
func (w *waitScanner) feed(p []byte) (string, bool) {
	_, _ = w.clean.Write(p)
	if w.text.Len() > waitTextLimit {
		keep := append([]byte(nil), w.text.Bytes()[w.text.Len()-waitTextLimit/2:]...)
		w.text.Reset()
		w.text.Write(keep)
	}
	if loc := w.re.FindIndex(w.text.Bytes()); loc != nil {
		return string(w.text.Bytes()[loc[0]:loc[1]]), true
	}
	return "", false
}

// hangUp returns a context that ends when the stream's client hangs up
// (its frames end), for streams that read nothing from it.
func (ss *sessionService) hangUp(ctx context.Context, sc *streamConn) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	goSafe(nil, ss.vms.log, "session stream hang-up", sc.fail, func() {
		defer cancel()
		for {
			if _, _, err := wire.ReadFrame(sc); err != nil {
				return
			}
		}
	})
	return ctx, cancel
}

// sessionEnded is why a run or wait ends without its answer: the
// controller's end (its error when the VM stopped or the channel broke).
func sessionEnded(name string, final *wire.Exit, what string) error {
	if final.Error != nil {
		return final.Error
	}
	return conflictf("session %s exited with status %d %s", name, final.Code, what)
}

func (ss *sessionService) runSession(ctx context.Context, p wire.SessionRunParams, sc *streamConn) error {
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	c, err := ss.controller(ctx, vm, sg, p.Name)
	if err != nil {
		return err
	}
	if c.exitedAtAttach || c.isEnded() {
		return conflictf("session %s has exited: it runs no more commands (`ember shell %s %s` starts a new one)", p.Name, vm.Name, p.Name)
	}
	tok, err := runToken()
	if err != nil {
		return err
	}
	// Attached before the line is typed, so nothing it prints is missed.
	cl := newSessionClient(0, 0)
	c.attach(cl, replayNone)
	defer c.detach(cl)
	if err := c.write(ctx, nil, []byte(runLine(p.Command, tok))); err != nil {
		return err
	}
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := ss.hangUp(ctx, sc)
	defer cancel()
	scan := newRunScanner(tok)
	fw := &wire.FrameWriter{W: sc, Kind: wire.FrameStdout}
	var off int64
	for {
		items, final, err := cl.next(ctx)
		if err != nil {
			return nil // the client hung up; the command runs on
		}
		for _, it := range items {
			if it.ev != nil {
				if it.ev.Offset != nil {
					off = *it.ev.Offset
				}
				continue
			}
			out, done, code, used := scan.feed(it.out)
			if _, err := fw.Write(out); err != nil {
				return nil
			}
			if done {
				next := off + int64(used)
				_ = wire.WriteJSONFrame(sc, wire.FrameSession, wire.SessionEvent{Offset: &next})
				sc.exit(code, nil)
				return nil
			}
			off += int64(len(it.out))
		}
		if final != nil {
			_, _ = fw.Write(scan.rest())
			sc.exit(-1, sessionEnded(p.Name, final, "before the command finished"))
			return nil
		}
	}
}

func (ss *sessionService) waitSession(ctx context.Context, p wire.SessionWaitParams, sc *streamConn) error {
	re, err := regexp.Compile(p.Pattern)
	if err != nil {
		return invalidf("session wait: %v", err)
	}
	vm, sg, err := ss.sessionTarget(ctx, p.Ref, p.Name)
	if err != nil {
		return err
	}
	c, err := ss.controller(ctx, vm, sg, p.Name)
	if err != nil {
		return err
	}
	cl := newSessionClient(0, 0)
	from := replayNone
	if p.Since != nil {
		from = replaySince(*p.Since)
	}
	c.attach(cl, from)
	defer c.detach(cl)
	if err := sc.startStream(); err != nil {
		return nil
	}
	ctx, cancel := ss.hangUp(ctx, sc)
	defer cancel()
	scan := newWaitScanner(re)
	var off int64
	for {
		items, final, err := cl.next(ctx)
		if err != nil {
			return nil
		}
		for _, it := range items {
			if it.ev != nil {
				if it.ev.Offset != nil {
					off = *it.ev.Offset
				}
				continue
			}
			off += int64(len(it.out))
			if m, ok := scan.feed(it.out); ok {
				_, _ = (&wire.FrameWriter{W: sc, Kind: wire.FrameStdout}).Write([]byte(m))
				_ = wire.WriteJSONFrame(sc, wire.FrameSession, wire.SessionEvent{Offset: &off})
				sc.exit(0, nil)
				return nil
			}
		}
		if final != nil {
			sc.exit(-1, sessionEnded(p.Name, final, "before its output matched "+strconv.Quote(p.Pattern)))
			return nil
		}
	}
}
