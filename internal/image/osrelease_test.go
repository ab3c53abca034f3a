package image

import "testing"

func TestCodename(t *testing.T) {
	for in, want := range map[string]string{
		"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n": "bookworm",
		"VERSION_CODENAME=\"trixie\"\n":  "trixie",
		"  VERSION_CODENAME='noble'  \n": "noble",
		"ID=alpine\n":                    "",
		"":                               "",
		"VERSION_CODENAME\n":             "",
	} {
		if got := Codename([]byte(in)); got != want {
			t.Errorf("Codename(%q) = %q, want %q", in, got, want)
		}
	}
}
