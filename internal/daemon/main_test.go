package daemon

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test must leave no goroutine behind: the daemon's Close waits for
// its work, and streams end with their connections.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
