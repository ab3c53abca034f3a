package termtext

import (
	"bytes"
	"strings"
	"testing"
)

func TestStripQueries(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain", "hello\r\n", "hello\r\n"},
		{"cursor position query", "\x1b[6n$ ", "$ "},
		{"the shell's prompt with its query", "\x1b[?2004h\x1b[6n\x1b]0;root@vm1: ~\x07root@vm1:~# ", "\x1b[?2004h\x1b]0;root@vm1: ~\x07root@vm1:~# "},
		{"DSR status and private DSR", "a\x1b[5nb\x1b[?6nc\x1b[?996nd", "abcd"},
		{"DA1 DA2 DA3", "a\x1b[cb\x1b[0cc\x1b[>cd\x1b[>0ce\x1b[=cf", "abcdef"},
		{"linux console cursor shape is no query", "\x1b[?6c", "\x1b[?6c"},
		{"DECREQTPARM", "\x1b[1xa", "a"},
		{"window reports", "\x1b[18t\x1b[14;2t\x1b[21ta", "a"},
		{"window operations stay", "\x1b[8;24;80t\x1b[22;0t\x1b[23;0ta", "\x1b[8;24;80t\x1b[22;0t\x1b[23;0ta"},
		{"DECRQM", "\x1b[?2026$p\x1b[4$pa", "a"},
		{"XTVERSION and cursor style", "\x1b[>q\x1b[2 qa", "\x1b[2 qa"},
		{"kitty keyboard query and set", "\x1b[?u\x1b[>1ua", "\x1b[>1ua"},
		{"XTQMODKEYS", "\x1b[?4m\x1b[1ma", "\x1b[1ma"},
		{"DECRQSS", "a\x1bP$qm\x1b\\b", "ab"},
		{"XTGETTCAP", "a\x1bP+q544e\x1b\\b", "ab"},
		{"sixel stays", "\x1bPq#0;2;0;0;0\x1b\\", "\x1bPq#0;2;0;0;0\x1b\\"},
		{"OSC colour queries", "\x1b]11;?\x07\x1b]10;?\x1b\\\x1b]4;1;?\x07a", "a"},
		{"OSC clipboard query", "\x1b]52;c;?\x07a", "a"},
		{"OSC title and colour set stay", "\x1b]0;t?\x07\x1b]11;#000000\x07", "\x1b]0;t?\x07\x1b]11;#000000\x07"},
		{"kitty graphics query", "\x1b_Gi=31,a=q;AAAA\x1b\\\x1b_Gf=24;AAAA\x1b\\", "\x1b_Gf=24;AAAA\x1b\\"},
		{"DECID and ENQ", "a\x1bZb\x05c", "abc"},
		{"other ESC sequences stay", "\x1b7\x1b(B\x1bc\x1b8", "\x1b7\x1b(B\x1bc\x1b8"},
		{"colours and alternate screen stay", "\x1b[?1049h\x1b[1;31mx\x1b[0m\x1b[?1049l", "\x1b[?1049h\x1b[1;31mx\x1b[0m\x1b[?1049l"},
		{"C1 CSI query", "a\u009b6nb", "ab"},
		{"C1 OSC query with C1 ST", "a\u009d11;?\u009cb", "ab"},
		{"UTF-8 that holds a C1-like byte", "ě\u00a0é", "ě\u00a0é"},
		{"raw 8-bit CSI is no UTF-8 and no query", "a\x9b6nb", "a\x9b6nb"},
		{"a lone lead byte cannot join a C1-like byte", "\xc2\x1b\x9bc", "\ufffd\x9bc"},
		{"control inside a query is carried out", "a\x1b[6\nnb", "a\nb"},
		{"CAN abandons the sequence", "a\x1b[6\x18nb", "a\x18nb"},
		{"ESC restarts", "a\x1b\x1b[6nb", "ab"},
		{"an abandoned start does not join what follows a query", "\x1b[\x1b[6n6n", "6n"},
		{"ESC inside OSC ends it", "\x1b]11;?\x1b[6nb", "b"},
		{"a string an ESC ended gets its ST", "\x1b]0;t\x1b[6nb", "\x1b]0;t\x1b\\b"},
		{"unfinished at the end is kept", "a\x1b[6", "a\x1b[6"},
		{"unfinished OSC at the end is kept", "a\x1b]11;?", "a\x1b]11;?"},
		{"ESC at the end of an OSC is kept", "a\x1b]0;t\x1b", "a\x1b]0;t\x1b"},
	} {
		if got := string(StripQueries([]byte(c.in))); got != c.want {
			t.Errorf("%s: StripQueries(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
		// The same through a writer, one byte at a time.
		var buf bytes.Buffer
		f := NewQueryFilter(&buf)
		for i := 0; i < len(c.in); i++ {
			f.Write([]byte{c.in[i]})
		}
		f.Flush()
		if buf.String() != c.want {
			t.Errorf("%s: byte by byte %q, want %q", c.name, buf.String(), c.want)
		}
	}
}

func TestStripQueriesLongSequences(t *testing.T) {
	// A long OSC (a clipboard copy) passes whole, even if it ends in "?".
	long := "\x1b]52;c;" + strings.Repeat("QUFB", 4000) + "\x07"
	if got := string(StripQueries([]byte(long + "x"))); got != long+"x" {
		t.Fatalf("long OSC: %d bytes, want %d", len(got), len(long)+1)
	}
	longq := "\x1b]11;" + strings.Repeat(";", maxHeld) + "?\x07"
	if got := string(StripQueries([]byte(longq))); got != longq {
		t.Fatalf("an over-long string is let through: %d bytes of %d", len(got), len(longq))
	}
	// Many sequences: the output is the input without the queries.
	in := strings.Repeat("\x1b[31mred\x1b[6n\x1b[0m\r\n", 1000)
	want := strings.Repeat("\x1b[31mred\x1b[0m\r\n", 1000)
	if got := string(StripQueries([]byte(in))); got != want {
		t.Fatal("repeated")
	}
}

func FuzzStripQueries(f *testing.F) {
	for _, s := range []string{"\x1b[6n", "\x1b]11;?\x07", "\x1bP$qm\x1b\\", "a\u009b6n", "\x1b]0;t\x1b[6n", "\xc2"} {
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, in []byte, split int) {
		out := StripQueries(in)
		// It grows only by the ST a string cut short by an ESC gets, and
		// a lone UTF-8 lead byte written as U+FFFD.
		if len(out) > len(in)+2*bytes.Count(in, []byte{0x1b})+2*bytes.Count(in, []byte{0xc2}) {
			t.Fatalf("grew: %q -> %q", in, out)
		}
		// Stripping again changes nothing that a terminal would answer:
		// no query is left, so a second pass is the identity.
		if again := StripQueries(out); !bytes.Equal(again, out) {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
		}
		// Split anywhere, the writer gives the same.
		var buf bytes.Buffer
		w := NewQueryFilter(&buf)
		if split < 0 {
			split = -split
		}
		cut := 0
		if len(in) > 0 {
			cut = split % (len(in) + 1)
		}
		w.Write(in[:cut])
		w.Write(in[cut:])
		w.Flush()
		if !bytes.Equal(buf.Bytes(), out) {
			t.Fatalf("split at %d: %q, want %q", cut, buf.Bytes(), out)
		}
	})
}

func TestOnlyAnswers(t *testing.T) {
	for _, a := range []string{
		"\x1b[6;14R", "\x1b[?6;14;1R", "\x1b[0n", "\x1b[?64;1;2;6;22c", "\x1b[>41;380;0c", "\x1bP!|00000000\x1b\\",
		"\x1b[?2026;2$y", "\x1b[8;24;80t", "\x1b]11;rgb:0000/0000/0000\x07", "\x1b]10;rgb:ffff/ffff/ffff\x1b\\",
		"\x1bP1$r0m\x1b\\", "\x1bP>|xterm(388)\x1b\\", "\x1b[?0u", "\x1b[2;1;1;120;120;1;0x",
		"\x1b[6;14R\x1b]11;rgb:0000/0000/0000\x07", // two answers at once
	} {
		if !OnlyAnswers([]byte(a)) {
			t.Errorf("OnlyAnswers(%q) = false", a)
		}
	}
	for _, k := range []string{
		"", "a", "ls\r", "\x1b[A", "\x1bOA", "\x1b[15~", "\x1b[1;5C", "\x1b[<0;10;5M", "\x1b[M !!", "\x03", "\x1b",
		"\x1b[6;14Rx", "x\x1b[6;14R", "\x1b[200~pasted\x1b[201~", "\x1b]0;title\x07", "\x1b[6",
	} {
		if OnlyAnswers([]byte(k)) {
			t.Errorf("OnlyAnswers(%q) = true", k)
		}
	}
}
