package daemon

import (
	"os"
	"testing"
)

func TestStatusMemory(t *testing.T) {
	status := "Name:\tqemu-system-x86\nVmRSS:\t  220000 kB\nRssAnon:\t  194000 kB\nRssFile:\t   26000 kB\nRssShmem:\t    1000 kB\nThreads:\t4\n"
	if got, want := statusMemory([]byte(status)), int64(195000)<<10; got != want {
		t.Fatalf("statusMemory = %d, want %d", got, want)
	}
	for _, bad := range []string{"", "RssAnon: lots\n", "RssAnon:\t-5 kB\n", "RssAnon:\t5 MB\n"} {
		if got := statusMemory([]byte(bad)); got != 0 {
			t.Errorf("statusMemory(%q) = %d, want 0", bad, got)
		}
	}
	if processMemory(os.Getpid()) <= 0 {
		t.Error("this process holds no memory?")
	}
	if processMemory(0) != 0 || processMemory(-1) != 0 {
		t.Error("no process, some memory")
	}
}
