package termtext

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClean(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain", "hello, world", "hello, world"},
		{"newlines and tabs", "a\tb\nc\n", "a\tb\nc\n"},
		{"unicode", "naïve ☃ 日本", "naïve ☃ 日本"},
		{"title and clear", "\x1b]0;pwned\x07\x1b[2J", ""},
		{"title with ST", "a\x1b]2;pwned\x1b\\b", "ab"},
		{"colour", "\x1b[1;31mred\x1b[0m", "red"},
		{"private CSI", "\x1b[?1049hx\x1b[?25l", "x"},
		{"cursor up over earlier output", "ok\n\x1b[1A\x1b[2Kforged", "ok\nforged"},
		{"short escapes", "\x1b7a\x1b8\x1b(Bb\x1bc", "ab"},
		{"DCS", "x\x1bPq#0;2;0;0;0\x1b\\y", "xy"},
		{"APC PM SOS", "\x1b_a\x07\x1b^b\x07\x1bXc\x07d", "d"},
		{"C1 CSI", "a\u009b31mb", "ab"},
		{"C1 OSC with C1 ST", "a\u009d0;t\u009cb", "ab"},
		{"other C1", "a\u0085b\u008dc", "abc"},
		{"carriage return", "progress 10%\rprogress 99%\r\n", "progress 10%progress 99%\n"},
		{"backspace and bell", "ab\b\bxy\x07", "abxy"},
		{"NUL and DEL", "a\x00b\x7fc", "abc"},
		{"vertical tab and form feed", "a\vb\fc", "abc"},
		{"bidi override", "file\u202egnp.exe", "filegnp.exe"},
		{"invalid UTF-8", "a\xffb\xc3", "a\ufffdb\ufffd"},
		{"lone ESC at end", "abc\x1b", "abc"},
		{"ESC before a non-sequence character", "a\x1b\nb", "a\nb"},
		{"ESC ESC", "a\x1b\x1b[31mb", "ab"},
		{"CSI cut by a control", "a\x1b[12\nb", "a\nb"},
		{"unterminated OSC ends at the newline", "a\x1b]0;title\nb", "a\nb"},
		{"ESC inside OSC starts a sequence", "\x1b]0;t\x1b[2Jx", "x"},
		{"8-bit CSI bytes", "a\x9b2Jb", "a\ufffd2Jb"},
	} {
		if got := Clean(c.in); got != c.want {
			t.Errorf("%s: Clean(%q) = %q, want %q", c.name, c.in, got, c.want)
		}
	}
}

func TestWriterSplitsAnywhere(t *testing.T) {
	in := "a\x1b]0;pwned\x07b\x1b[2J\x1b[1;31m日本\u009b1m\xe2\x82\xacz\r\n"
	want := Clean(in)
	for cut := 0; cut <= len(in); cut++ {
		for cut2 := cut; cut2 <= len(in); cut2++ {
			var buf bytes.Buffer
			w := NewWriter(&buf)
			for _, part := range []string{in[:cut], in[cut:cut2], in[cut2:]} {
				if n, err := w.Write([]byte(part)); err != nil || n != len(part) {
					t.Fatalf("write %q: %d, %v", part, n, err)
				}
			}
			w.Close()
			if buf.String() != want {
				t.Fatalf("cut at %d,%d: %q, want %q", cut, cut2, buf.String(), want)
			}
		}
	}
}

func TestWriterFlushesAnUnfinishedCharacter(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Write([]byte("x\xe2\x82"))
	if buf.String() != "x" {
		t.Fatalf("before close: %q", buf.String())
	}
	w.Close()
	if want := Clean("x\xe2\x82"); buf.String() != want {
		t.Fatalf("after close: %q, want %q", buf.String(), want)
	}
}

// checkClean fails unless out is text a terminal only prints.
func checkClean(t *testing.T, in, out string) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("Clean(%q) = %q: not UTF-8", in, out)
	}
	for _, r := range out {
		if (r < 0x20 && r != '\n' && r != '\t') || (r >= 0x7f && r <= 0x9f) || bidi(r) {
			t.Fatalf("Clean(%q) = %q: keeps %U", in, out, r)
		}
	}
}

func FuzzClean(f *testing.F) {
	for _, s := range []string{
		"", "plain", "\x1b]0;pwned\x07\x1b[2J", "\x1b[1;31mred\x1b[0m\r\n", "\u009b2J\u009d0;x\u009c",
		"\x1bP\x1b\\", "\xff\xfe\xc3", "a\x1b", "\u202e", strings.Repeat("\x1b[", 100),
	} {
		f.Add(s, uint(len(s)/2))
	}
	f.Fuzz(func(t *testing.T, in string, cut uint) {
		out := Clean(in)
		checkClean(t, in, out)
		if again := Clean(out); again != out {
			t.Fatalf("Clean is not idempotent on %q: %q then %q", in, out, again)
		}
		if len(out) > 3*len(in) {
			t.Fatalf("Clean(%q) grew to %d bytes", in, len(out))
		}
		// The Writer gives the same text, wherever the input is split.
		c := int(cut % uint(len(in)+1))
		var buf bytes.Buffer
		w := NewWriter(&buf)
		w.Write([]byte(in[:c]))
		w.Write([]byte(in[c:]))
		w.Close()
		if buf.String() != out {
			t.Fatalf("Writer split at %d of %q: %q, Clean: %q", c, in, buf.String(), out)
		}
	})
}
