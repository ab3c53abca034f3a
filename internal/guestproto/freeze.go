package guestproto

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Freezing the guest's root filesystem, so the host can copy a consistent
// disk while the VM runs (`ember image promote`). The freeze lives exactly
// as long as one exec channel whose command is EncodeFreeze's:
//
//  1. the agent freezes the root filesystem (FIFREEZE: the kernel writes
//     out every dirty page and the journal and flushes the disk, whose
//     flush reaches the host file), writes FrozenLine on stdout and arms
//     a timer of the requested limit;
//  2. the host copies the disk;
//  3. the host closes its stdin (EOF); the agent thaws (FITHAW) and ends
//     the channel with exit status 0, or ExitFreezeExpired when the timer
//     had thawed it before (the copy may then be inconsistent), or 1 when
//     the thaw failed (a message on stderr).
//
// The channel closing (the host or its connection went away) thaws as
// EOF does, and the timer thaws a guest whose host never comes back: a
// guest is never left frozen.
const FreezeCommand = "ember-fsfreeze"

// FrozenLine is what the agent writes on stdout once the filesystem is
// frozen; nothing else comes before it.
const FrozenLine = "frozen\n"

// ExitFreezeExpired is the freeze's exit status when its timer thawed the
// filesystem before the host asked.
const ExitFreezeExpired = 3

// MaxFreeze bounds a freeze's limit: a guest whose writes block longer
// would see its own watchdogs fire.
const MaxFreeze = 15 * time.Minute

// EncodeFreeze is the exec command that freezes for at most limit
// (rounded up to a second, 1 s to MaxFreeze).
func EncodeFreeze(limit time.Duration) (string, error) {
	if limit <= 0 || limit > MaxFreeze {
		return "", fmt.Errorf("freeze limit %v is outside 1s..%v", limit, MaxFreeze)
	}
	secs := int((limit + time.Second - 1) / time.Second)
	return FreezeCommand + " " + strconv.Itoa(secs), nil
}

// DecodeFreeze reads a freeze command: ok is false for any other command.
// The limit must be a whole number of seconds from 1 to MaxFreeze.
func DecodeFreeze(cmd string) (limit time.Duration, ok bool, err error) {
	rest, ok := strings.CutPrefix(cmd, FreezeCommand+" ")
	if !ok {
		if cmd == FreezeCommand {
			return 0, true, fmt.Errorf("bad freeze request: no limit")
		}
		return 0, false, nil
	}
	if len(rest) > 6 {
		return 0, true, fmt.Errorf("bad freeze request: limit %.16q", rest)
	}
	secs, err := strconv.Atoi(rest)
	if err != nil || secs < 1 || time.Duration(secs)*time.Second > MaxFreeze {
		return 0, true, fmt.Errorf("bad freeze request: limit %q is not 1..%d seconds", rest, int(MaxFreeze/time.Second))
	}
	return time.Duration(secs) * time.Second, true, nil
}
