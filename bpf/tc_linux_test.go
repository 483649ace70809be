package bpf

import (
	"bytes"
	"net"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The selection needs no kernel: it reads the link's attributes.
func TestChooseInterfaces(t *testing.T) {
	link := func(name, encap string, flags uint32) netlink.Link {
		return &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name, EncapType: encap, RawFlags: flags,
			Flags: netFlags(flags)}}
	}
	up := uint32(unix.IFF_UP)
	eth := link("eth0", "ether", up)
	lo := link("lo", "loopback", up|unix.IFF_LOOPBACK)
	down := link("eth1", "ether", 0)
	wg := link("wg0", "none", up|unix.IFF_POINTOPOINT)
	ipip := link("tunl0", "ipip", up)

	for _, tc := range []struct {
		name     string
		explicit []string
		link     netlink.Link
		ok       bool
		err      string // in the error, "" for none
		logged   string // in the log, "" for nothing
	}{
		{"ethernet", nil, eth, true, "", ""},
		{"loopback", nil, lo, true, "", ""},
		{"down", nil, down, false, "", ""},
		{"wireguard left out", nil, wg, false, "", "interface=wg0 link_type=none"},
		{"ipip left out", nil, ipip, false, "", "interface=tunl0 link_type=ipip"},
		{"named ethernet", []string{"eth0"}, eth, true, "", ""},
		{"not named", []string{"eth0"}, lo, false, "", ""},
		{"named wireguard", []string{"wg0"}, wg, false, "interface wg0 has link type none", ""},
		{"named, down", []string{"eth1"}, down, false, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs bytes.Buffer
			a := &tcAttacher{log: hclog.New(&hclog.LoggerOptions{Output: &logs})}
			if tc.explicit != nil {
				a.explicit = map[string]bool{}
				for _, n := range tc.explicit {
					a.explicit[n] = true
				}
			}
			for i := 0; i < 2; i++ { // a link update repeats the interface
				ok, err := a.choose(tc.link)
				if ok != tc.ok {
					t.Errorf("chosen %v, want %v", ok, tc.ok)
				}
				switch {
				case tc.err == "" && err != nil:
					t.Errorf("error %v", err)
				case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
					t.Errorf("error %v, want one with %q", err, tc.err)
				}
			}
			got := logs.String()
			if tc.logged == "" && got != "" {
				t.Errorf("logged %q", got)
			}
			if tc.logged != "" && (!strings.Contains(got, tc.logged) || strings.Count(got, "\n") != 1) {
				t.Errorf("want one log line with %q, got %q", tc.logged, got)
			}
		})
	}
}

// netFlags translates IFF_ bits as netlink does for LinkAttrs.Flags.
func netFlags(raw uint32) net.Flags {
	var f net.Flags
	for _, m := range []struct {
		iff  uint32
		flag net.Flags
	}{{unix.IFF_UP, net.FlagUp}, {unix.IFF_LOOPBACK, net.FlagLoopback}, {unix.IFF_POINTOPOINT, net.FlagPointToPoint}} {
		if raw&m.iff != 0 {
			f |= m.flag
		}
	}
	return f
}
