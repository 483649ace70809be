package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SockDiag reads the TCP sockets on watched ports through netlink
// sock_diag, with their owners from /proc.
type SockDiag struct {
	ports   map[uint16]bool
	proc    string // /proc, or the host's /proc mounted elsewhere
	tracker *diagTracker
	owners  map[uint32]procOwner // by socket inode; /proc is read again on a miss
}

// NewSockDiag watches the given ports. With exchanges, it is the fallback
// source and derives exchanges from the sockets' timers.
func NewSockDiag(ports []uint16, proc string, exchanges bool) *SockDiag {
	d := &SockDiag{ports: map[uint16]bool{}, proc: proc, tracker: newDiagTracker(exchanges)}
	for _, p := range ports {
		d.ports[p] = true
	}
	if d.proc == "" {
		d.proc = "/proc"
	}
	return d
}

// Poll takes a snapshot and hands out the observations it gives.
func (d *SockDiag) Poll(now time.Time, out func(observe.Observation)) error {
	sockets, err := d.Sockets()
	if err != nil {
		return err
	}
	d.tracker.update(now, sockets, out)
	return nil
}

// Sockets lists the sockets on watched ports, IPv4 and IPv6.
func (d *SockDiag) Sockets() ([]Socket, error) {
	var out []Socket
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		resp, err := netlink.SocketDiagTCPInfo(family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("sock_diag: %w", err)
		}
		for _, r := range resp {
			if s, ok := d.socket(r); ok {
				out = append(out, s)
			}
		}
	}
	for _, s := range out {
		if _, ok := d.owners[s.Inode]; !ok && s.Inode != 0 {
			d.owners = socketOwners(d.proc)
			break
		}
	}
	for i := range out {
		if o, ok := d.owners[out[i].Inode]; ok {
			out[i].PID, out[i].Comm = o.pid, o.comm
		}
	}
	return out, nil
}

func (d *SockDiag) socket(r *netlink.InetDiagTCPInfoResp) (Socket, bool) {
	m := r.InetDiagMsg
	if m == nil || m.State == 10 { // TCP_LISTEN: no flow
		return Socket{}, false
	}
	local, lok := netip.AddrFromSlice(m.ID.Source)
	remote, rok := netip.AddrFromSlice(m.ID.Destination)
	if !lok || !rok {
		return Socket{}, false
	}
	lp := netip.AddrPortFrom(local.Unmap(), m.ID.SourcePort)
	rp := netip.AddrPortFrom(remote.Unmap(), m.ID.DestinationPort)
	s := Socket{State: int(m.State), RQueue: m.RQueue, Inode: m.INode}
	switch {
	case d.ports[rp.Port()]:
		s.Flow, s.ClientEnd = observe.Flow{Client: lp, Server: rp}, true
	case d.ports[lp.Port()]:
		s.Flow = observe.Flow{Client: rp, Server: lp}
	default:
		return Socket{}, false
	}
	if ti := r.TCPInfo; ti != nil {
		ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
		s.Unacked, s.Retrans = ti.Unacked, ti.Total_retrans
		s.SinceSent, s.SinceRecv, s.SinceAckRecv = ms(ti.Last_data_sent), ms(ti.Last_data_recv), ms(ti.Last_ack_recv)
		s.BytesAcked, s.BytesReceived = ti.Bytes_acked, ti.Bytes_received
	}
	return s, true
}

type procOwner struct {
	pid  uint32
	comm string
}

// socketOwners maps socket inodes to the processes holding them, from
// the /proc/PID/fd links ("socket:[INODE]"). Processes that vanish or
// cannot be read are passed over.
func socketOwners(proc string) map[uint32]procOwner {
	owners := map[uint32]procOwner{}
	dirs, _ := os.ReadDir(proc)
	for _, dir := range dirs {
		pid, err := strconv.ParseUint(dir.Name(), 10, 32)
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join(proc, dir.Name(), "fd"))
		if err != nil {
			continue
		}
		var comm string
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(proc, dir.Name(), "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 32)
			if err != nil {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(proc, dir.Name(), "comm"))
				comm = strings.TrimSpace(string(b))
			}
			if _, seen := owners[uint32(inode)]; !seen {
				owners[uint32(inode)] = procOwner{uint32(pid), comm}
			}
		}
	}
	return owners
}
