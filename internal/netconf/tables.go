package netconf

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
)

// ifname is an interface name as nftables compares it: NUL-padded to 16.
func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// TablesInstalled reports whether ember's tables exist: the inet one (NAT,
// input and egress policy) and the bridge one (per-TAP anti-spoofing).
// Both or neither is the normal state; one alone reads as not installed.
func TablesInstalled(table string) (bool, error) {
	have, err := installedFamilies(table)
	if err != nil {
		return false, err
	}
	return len(have) == 2, nil
}

// installedFamilies lists which of ember's two tables exist.
func installedFamilies(table string) ([]*nftables.Table, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	ts, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list nftables tables: %w", err)
	}
	var have []*nftables.Table
	for _, t := range ts {
		if t.Name == table && (t.Family == nftables.TableFamilyINet || t.Family == nftables.TableFamilyBridge) {
			have = append(have, &nftables.Table{Name: t.Name, Family: t.Family})
		}
	}
	return have, nil
}

func familyName(f nftables.TableFamily) string {
	if f == nftables.TableFamilyBridge {
		return "bridge"
	}
	return "inet"
}

// RemoveTables deletes ember's tables that exist, in one batch, and names
// them ("inet ember", "bridge ember"); other tables are untouched.
func RemoveTables(table string) ([]string, error) {
	have, err := installedFamilies(table)
	if err != nil || len(have) == 0 {
		return nil, err
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	var names []string
	for _, t := range have {
		c.DelTable(t)
		names = append(names, familyName(t.Family)+" "+table)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("delete nftables tables %s: %w", strings.Join(names, ", "), err)
	}
	return names, nil
}

// Cleanup removes everything ember set up in this namespace: the two
// nftables tables, the pool's TAPs and the bridge. It reports what it removed.
func Cleanup(table, bridge, tapPrefix string) ([]string, error) {
	var done []string
	removed, err := RemoveTables(table)
	if err != nil {
		return done, err
	}
	for _, t := range removed {
		done = append(done, "nftables table "+t)
	}
	n, err := DeleteAll(tapPrefix)
	if n > 0 {
		done = append(done, fmt.Sprintf("%d tap interfaces %s*", n, tapPrefix))
	}
	if err != nil {
		return done, err
	}
	if _, err := BridgeState(bridge); err == nil {
		if err := DeleteLink(bridge); err != nil {
			return done, err
		}
		done = append(done, "bridge "+bridge)
	}
	return done, nil
}
