package recipe

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRecipe(t *testing.T) {
	src := "# a test image\n" +
		"from tiny\n" +
		"\n" +
		"RUN echo one \\\n" +
		"  # a comment inside a continuation\n" +
		"  two > /hello\n" +
		"RUN [\"/bin/sh\", \"-c\", \"echo hi\"]\n" +
		"RUN [ -f /hello ] && echo yes\r\n" +
		"COPY app.conf ./dir/../x.txt /etc/app/\n" +
		"COPY [\"with space\", \"/opt/with space\"]\n" +
		"ENV GREETING=\"hello world\" EMPTY= B=c\\ d\n" +
		"ENV OLD the rest of the line\n" +
		"WORKDIR /srv\n" +
		"PACKAGES jq libc6-dev g++\n"
	r, err := Parse("Emberfile", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if r.From != "tiny" || r.FromLine != 2 || r.File != "Emberfile" {
		t.Fatalf("from = %q line %d file %q", r.From, r.FromLine, r.File)
	}
	if r.Digest != Digest([]byte(src)) || !strings.HasPrefix(r.Digest, "sha256:") {
		t.Fatalf("digest %q", r.Digest)
	}
	want := []Step{
		{Line: 4, Op: Run, Text: "RUN echo one   two > /hello", Shell: "echo one   two > /hello"},
		{Line: 7, Op: Run, Text: `RUN ["/bin/sh", "-c", "echo hi"]`, Argv: []string{"/bin/sh", "-c", "echo hi"}},
		{Line: 8, Op: Run, Text: "RUN [ -f /hello ] && echo yes", Shell: "[ -f /hello ] && echo yes"},
		{Line: 9, Op: Copy, Text: "COPY app.conf ./dir/../x.txt /etc/app/", Sources: []string{"app.conf", "x.txt"}, Dest: "/etc/app/"},
		{Line: 10, Op: Copy, Text: `COPY ["with space", "/opt/with space"]`, Sources: []string{"with space"}, Dest: "/opt/with space"},
		{Line: 11, Op: Env, Text: `ENV GREETING="hello world" EMPTY= B=c\ d`, Env: []EnvVar{{"GREETING", "hello world"}, {"EMPTY", ""}, {"B", "c d"}}},
		{Line: 12, Op: Env, Text: "ENV OLD the rest of the line", Env: []EnvVar{{"OLD", "the rest of the line"}}},
		{Line: 13, Op: Workdir, Text: "WORKDIR /srv", Dir: "/srv"},
		{Line: 14, Op: Packages, Text: "PACKAGES jq libc6-dev g++", Packages: []string{"jq", "libc6-dev", "g++"}},
	}
	if !reflect.DeepEqual(r.Steps, want) {
		for i := range r.Steps {
			t.Logf("got %d: %+v", i, r.Steps[i])
		}
		t.Fatalf("steps differ")
	}
	if got := r.CopySources(); !reflect.DeepEqual(got, []string{"app.conf", "x.txt", "with space"}) {
		t.Fatalf("copy sources %q", got)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]string{
		"":                                 "Emberfile:1: no FROM: a recipe starts with `FROM IMAGE`",
		"# only a comment\n\n":             "Emberfile:1: no FROM: a recipe starts with `FROM IMAGE`",
		"FROM tiny\nRUN true\nRUNN x\n":    `Emberfile:3: unknown instruction "RUNN" (a recipe has FROM, RUN, COPY, ENV, WORKDIR and PACKAGES)`,
		"\nRUN echo hi\nFROM tiny\n":       "Emberfile:2: RUN before FROM: a recipe starts with `FROM IMAGE`",
		"FROM tiny\nFROM debian\n":         "Emberfile:2: a second FROM (the first is on line 1): a recipe builds one image from one FROM",
		"FROM\n":                           "Emberfile:1: FROM takes one image, e.g. `FROM tiny` (got 0 words)",
		"FROM tiny AS base\n":              "Emberfile:1: FROM takes one image, e.g. `FROM tiny` (got 3 words)",
		"FROM tiny\nRUN\n":                 "Emberfile:2: RUN needs arguments",
		"FROM tiny\nRUN []\n":              "Emberfile:2: RUN [] names no program",
		"FROM tiny\nRUN echo \\\n":         "Emberfile:2: the recipe ends inside a line continuation (a last line ending in `\\`)",
		"FROM tiny\nCOPY ../secret /x\n":   "Emberfile:2: COPY ../secret: the source leaves the build context (sources are relative to it)",
		"FROM tiny\nCOPY a/../../b /x\n":   "Emberfile:2: COPY a/../../b: the source leaves the build context (sources are relative to it)",
		"FROM tiny\nCOPY /etc/passwd /x\n": "Emberfile:2: COPY /etc/passwd: the source leaves the build context (sources are relative to it)",
		"FROM tiny\nCOPY *.go /x/\n":       "Emberfile:2: COPY *.go: wildcards are not supported; name the files or their folder",
		"FROM tiny\nCOPY onlyone\n":        "Emberfile:2: COPY takes sources and a destination: `COPY SRC... DEST`",
		"FROM tiny\nCOPY a b /x\n":         `Emberfile:2: COPY with several sources needs a destination folder ending in /, not "/x"`,
		"FROM tiny\nCOPY --chown=1 a /x\n": "Emberfile:2: COPY --chown=1: options are not supported (files keep their modes and belong to root)",
		"FROM tiny\nENV 1A=b\n":            `Emberfile:2: ENV: "1A" is not a variable name`,
		"FROM tiny\nENV A=\"b\n":           "Emberfile:2: unterminated \" quote",
		"FROM tiny\nWORKDIR /a /b\n":       "Emberfile:2: WORKDIR takes one folder",
		"FROM tiny\nPACKAGES jq Bad\n":     `Emberfile:2: PACKAGES: "Bad" is not a Debian package name (lower-case letters, digits, '+', '-', '.')`,
		"FROM tiny\nRUN a\x00b\n":          "Emberfile:2: not text (invalid UTF-8 or a NUL byte)",
		"FROM tiny\nRUN \\\n\xff\n":        "Emberfile:3: not text (invalid UTF-8 or a NUL byte)",
	}
	for src, want := range cases {
		_, err := Parse("Emberfile", []byte(src))
		if err == nil || err.Error() != want {
			t.Errorf("Parse(%q):\n got %v\nwant %s", src, err, want)
		}
	}
}

func TestParseBounds(t *testing.T) {
	big := "FROM tiny\nRUN " + strings.Repeat("x", MaxSize) + "\n"
	if _, err := Parse("R", []byte(big)); err == nil || !strings.HasPrefix(err.Error(), "R:1: the recipe is ") {
		t.Fatalf("oversized: %v", err)
	}
	long := "FROM tiny\nRUN " + strings.Repeat("x \\\n", MaxLine/2) + "x\n"
	if _, err := Parse("R", []byte(long)); err == nil || err.Error() != "R:2: the instruction is longer than 65536 bytes" {
		t.Fatalf("long: %v", err)
	}
	many := "FROM tiny\n" + strings.Repeat("RUN true\n", MaxSteps+1)
	if _, err := Parse("R", []byte(many)); err == nil || err.Error() != "R:258: more than 256 steps" {
		t.Fatalf("many: %v", err)
	}
}

func TestStepKeyIgnoresSpelling(t *testing.T) {
	a, err := Parse("a", []byte("FROM tiny\nRUN echo   hi\nCOPY ./x /y\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse("b", []byte("# other\nFROM tiny\nrun echo   \\\n hi\nCOPY x /y\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a.Steps[1].Key() != b.Steps[1].Key() {
		t.Fatalf("copy keys differ: %s vs %s", a.Steps[1].Key(), b.Steps[1].Key())
	}
	if a.Steps[0].Key() == b.Steps[0].Key() {
		// "echo   hi" vs "echo    hi" are different shell texts; the
		// key is exact about what runs.
		t.Logf("run keys equal")
	}
	if a.Digest == b.Digest {
		t.Fatal("different bytes, same digest")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("FROM tiny\nRUN echo hi \\\n # c\n there\nCOPY a b /c/\nENV A=\"b c\" D\\ =e\nWORKDIR /x\nPACKAGES jq\n"))
	f.Add([]byte("FROM tiny\nRUN [\"a\",\"b\"]\nCOPY [\"x\",\"y\"]\nENV A b c\n"))
	f.Add([]byte("RUNN\nFROM\n\\\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("F", data)
		if err != nil {
			var e *Error
			if !asError(err, &e) || e.File != "F" || e.Line < 1 || e.Line > strings.Count(string(data), "\n")+1 {
				t.Fatalf("error without a good file and line: %v", err)
			}
			return
		}
		if r.From == "" || len(r.Steps) > MaxSteps {
			t.Fatalf("parsed without FROM or too many steps: %+v", r)
		}
		for _, s := range r.Steps {
			for _, src := range s.Sources {
				if _, err := ContextPath(src); err != nil || src != "." && strings.HasPrefix(src, "..") {
					t.Fatalf("source %q leaves the context", src)
				}
			}
			_ = s.Key()
		}
	})
}

func asError(err error, e **Error) bool {
	v, ok := err.(*Error)
	*e = v
	return ok
}
