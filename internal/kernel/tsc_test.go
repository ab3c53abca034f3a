package kernel

import "testing"

func TestTSCParsing(t *testing.T) {
	log := []byte("[    0.000000] tsc: Fast TSC calibration using PIT\n" +
		"[    0.000000] tsc: Detected 2096.019 MHz processor\n" +
		"[    1.000000] clocksource: tsc-early: mask: ...\n")
	if v, ok := tscFromKernelLog(log); !ok || v != 2096019 {
		t.Fatalf("detected = %d, %v", v, ok)
	}
	refined := append(log, []byte("[    2.1] tsc: Refined TSC clocksource calibration: 2095.998 MHz\n")...)
	if v, ok := tscFromKernelLog(refined); !ok || v != 2095998 {
		t.Fatalf("refined = %d, %v", v, ok)
	}
	if _, ok := tscFromKernelLog([]byte("nothing here")); ok {
		t.Fatal("parsed a log without tsc lines")
	}
	cpuinfo := []byte("processor\t: 0\nmodel name\t: x\ncpu MHz\t\t: 2596.128\ncache size\t: 1 KB\n")
	if v, ok := tscFromCPUInfo(cpuinfo); !ok || v != 2596128 {
		t.Fatalf("cpuinfo = %d, %v", v, ok)
	}
	for in, want := range map[string]int{"2000": 2000000, "2.5": 2500, "1234.56789": 1234567} {
		if v, err := mhzToKHz(in); err != nil || v != want {
			t.Errorf("mhzToKHz(%q) = %d, %v; want %d", in, v, err, want)
		}
	}
}

func TestHostTSCkHz(t *testing.T) {
	v, err := HostTSCkHz()
	if err != nil {
		t.Skipf("no tsc rate on this host: %v", err)
	}
	// Any real x86 TSC runs between 100 MHz and 10 GHz.
	if v < 100_000 || v > 10_000_000 {
		t.Fatalf("tsc = %d kHz, implausible", v)
	}
	t.Logf("host tsc: %d kHz", v)
}
