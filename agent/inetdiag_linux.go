package agent

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"golang.org/x/sys/unix"
)

// A sock_diag dump of the TCP sockets on watched ports, filtered in the
// kernel and parsed in place. On a host with tens of thousands of sockets
// the dump runs every few seconds, so it must not leave garbage behind:
// the receive buffer and the result slice are kept between dumps, and
// only sockets on watched ports cross into user space.
//
// Layouts are from include/uapi/linux/inet_diag.h, sock_diag.h and tcp.h;
// everything used here exists since 4.1.

const (
	sockDiagByFamily  = 20 // SOCK_DIAG_BY_FAMILY
	inetDiagReqV2Len  = 56 // struct inet_diag_req_v2
	inetDiagMsgLen    = 72 // struct inet_diag_msg
	inetDiagInfo      = 2  // INET_DIAG_INFO: struct tcp_info
	inetDiagBytecode  = 1  // INET_DIAG_REQ_BYTECODE
	inetDiagBcJmp     = 1  // INET_DIAG_BC_JMP: always takes "no"
	inetDiagBcSGe     = 2  // INET_DIAG_BC_S_GE: local port >=
	inetDiagBcSLe     = 3  // INET_DIAG_BC_S_LE: local port <=
	inetDiagBcDGe     = 4  // INET_DIAG_BC_D_GE: remote port >=
	inetDiagBcDLe     = 5  // INET_DIAG_BC_D_LE: remote port <=
	tcpStatesAll      = 0xfff
	diagReceiveBuffer = 64 << 10
)

// Offsets in struct tcp_info.
const (
	tcpiUnacked       = 24
	tcpiLastDataSent  = 44
	tcpiLastDataRecv  = 52
	tcpiLastAckRecv   = 56
	tcpiTotalRetrans  = 100
	tcpiBytesAcked    = 120
	tcpiBytesReceived = 128
)

// portFilter is inet_diag bytecode that keeps a socket whose local or
// remote port is one of ports. Port equality is a pair of comparisons
// (">=" then "<="): the "==" ops came after 4.18. The kernel's audit
// walks the "yes" jumps and wants them to reach the end exactly, so a
// test falls through on a match and jumps over on a miss:
//
//	ge(p) le(p) jump-to-end  ge(p) le(p) jump-to-end ... ge(p) le(p)
//
// A comparison is two ops, the port in the second op's "no". A match
// falls to the jump, which accepts, or past the last test to the end,
// which accepts. A miss goes to the next test, or from the last one four
// bytes past the end, which rejects; both are 20 bytes on from ge and 12
// from le.
func portFilter(ports []uint16) []byte {
	const cmp, jump = 8, 4
	var b []byte
	for i, p := range ports {
		for j, local := range []bool{true, false} {
			ge, le := byte(inetDiagBcSGe), byte(inetDiagBcSLe)
			if !local {
				ge, le = inetDiagBcDGe, inetDiagBcDLe
			}
			for k, code := range []byte{ge, le} {
				b = append(b, code, cmp)
				b = binary.NativeEndian.AppendUint16(b, uint16(2*cmp+jump-k*cmp))
				b = append(b, 0, 0)
				b = binary.NativeEndian.AppendUint16(b, p)
			}
			if last := i == len(ports)-1 && j == 1; !last {
				b = append(b, inetDiagBcJmp, jump, 0, 0) // "no" set below
			}
		}
	}
	// Each jump goes to the end.
	for off := 2 * cmp; off < len(b); off += 2*cmp + jump {
		binary.NativeEndian.PutUint16(b[off+2:], uint16(len(b)-off))
	}
	return b
}

// diagDump lists the TCP sockets on watched ports of one family into
// out, which it returns grown. It reuses buf for the replies.
func diagDump(family uint8, filter []byte, buf []byte, out []Socket, ports map[uint16]bool) ([]Socket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return out, fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("netlink bind: %w", err)
	}

	// nlmsghdr, inet_diag_req_v2, then the bytecode as an attribute.
	attrLen := unix.SizeofRtAttr + len(filter)
	if len(filter) == 0 {
		attrLen = 0
	}
	req := make([]byte, unix.SizeofNlMsghdr+inetDiagReqV2Len+attrLen)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], sockDiagByFamily)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1) // sequence
	r := req[unix.SizeofNlMsghdr:]
	r[0], r[1], r[2] = family, unix.IPPROTO_TCP, 1<<(inetDiagInfo-1)
	ne.PutUint32(r[4:], tcpStatesAll&^(1<<observe.TCPListen))
	if a := r[inetDiagReqV2Len:]; attrLen > 0 {
		ne.PutUint16(a[0:], uint16(attrLen))
		ne.PutUint16(a[2:], inetDiagBytecode)
		copy(a[unix.SizeofRtAttr:], filter)
	}
	if err := unix.Sendto(fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return out, fmt.Errorf("sock_diag request: %w", err)
	}

	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			return out, fmt.Errorf("sock_diag reply: %w", err)
		}
		for msgs := buf[:n]; len(msgs) >= unix.SizeofNlMsghdr; {
			l := int(ne.Uint32(msgs[0:]))
			if l < unix.SizeofNlMsghdr || l > len(msgs) {
				return out, fmt.Errorf("sock_diag reply: message of %d bytes in %d", l, len(msgs))
			}
			typ, body := ne.Uint16(msgs[4:]), msgs[unix.SizeofNlMsghdr:l]
			msgs = msgs[min(nlAlign(l), len(msgs)):]
			switch typ {
			case unix.NLMSG_DONE, unix.NLMSG_ERROR:
				if len(body) >= 4 {
					if errno := int32(ne.Uint32(body)); errno < 0 {
						return out, fmt.Errorf("sock_diag: %w", unix.Errno(-errno))
					}
				}
				if typ == unix.NLMSG_DONE {
					return out, nil
				}
			case sockDiagByFamily:
				if s, ok := parseDiagMsg(body, ports); ok {
					out = append(out, s)
				}
			}
		}
	}
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// parseDiagMsg reads one inet_diag_msg and its tcp_info, if any.
func parseDiagMsg(m []byte, ports map[uint16]bool) (Socket, bool) {
	if len(m) < inetDiagMsgLen || observe.TCPState(m[1]) == observe.TCPListen {
		return Socket{}, false
	}
	family, state := m[0], observe.TCPState(m[1])
	sport, dport := binary.BigEndian.Uint16(m[4:]), binary.BigEndian.Uint16(m[6:])
	var local, remote netip.Addr
	switch family {
	case unix.AF_INET:
		local, remote = netip.AddrFrom4([4]byte(m[8:12])), netip.AddrFrom4([4]byte(m[24:28]))
	case unix.AF_INET6:
		local, remote = netip.AddrFrom16([16]byte(m[8:24])).Unmap(), netip.AddrFrom16([16]byte(m[24:40])).Unmap()
	default:
		return Socket{}, false
	}
	ne := binary.NativeEndian
	s := Socket{State: state, RQueue: ne.Uint32(m[56:]), Inode: ne.Uint32(m[68:])}
	lp, rp := netip.AddrPortFrom(local, sport), netip.AddrPortFrom(remote, dport)
	switch {
	case ports[dport]:
		s.Flow, s.ClientEnd = observe.Flow{Client: lp, Server: rp}, true
	case ports[sport]:
		s.Flow = observe.Flow{Client: rp, Server: lp}
	default:
		return Socket{}, false
	}
	for attrs := m[inetDiagMsgLen:]; len(attrs) >= unix.SizeofRtAttr; {
		l := int(ne.Uint16(attrs[0:]))
		if l < unix.SizeofRtAttr || l > len(attrs) {
			break
		}
		if ne.Uint16(attrs[2:]) == inetDiagInfo {
			tcpInfo(attrs[unix.SizeofRtAttr:l], &s)
		}
		attrs = attrs[min((l+3)&^3, len(attrs)):]
	}
	return s, true
}

// tcpInfo copies what the tracker reads from struct tcp_info. A kernel
// with a shorter struct leaves the missing fields zero.
func tcpInfo(ti []byte, s *Socket) {
	ne := binary.NativeEndian
	u32 := func(off int) uint32 {
		if len(ti) < off+4 {
			return 0
		}
		return ne.Uint32(ti[off:])
	}
	u64 := func(off int) uint64 {
		if len(ti) < off+8 {
			return 0
		}
		return ne.Uint64(ti[off:])
	}
	ms := func(off int) time.Duration { return time.Duration(u32(off)) * time.Millisecond }
	s.Unacked, s.Retrans = u32(tcpiUnacked), u32(tcpiTotalRetrans)
	s.SinceSent, s.SinceRecv, s.SinceAckRecv = ms(tcpiLastDataSent), ms(tcpiLastDataRecv), ms(tcpiLastAckRecv)
	s.BytesAcked, s.BytesReceived = u64(tcpiBytesAcked), u64(tcpiBytesReceived)
}
