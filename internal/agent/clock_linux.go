package agent

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// stepClock sets the guest's wall clock (CLOCK_REALTIME) to now at once,
// as the host asks after a restore (becomeNew) or after the VM stood
// still (ServerConfig.SetClock). A step, not a slew: a guest seconds
// behind would take minutes to catch up at adjtime's rate, and the
// monotonic clock, which programs time intervals with, is not touched.
func stepClock(now time.Time) error {
	ts := unix.NsecToTimespec(now.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set the clock: %w", err)
	}
	return nil
}
