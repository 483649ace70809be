package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// peerNamespaces keeps the kernel's peer_ns map: for each watched
// interface whose other end is in another network namespace (a veth whose
// peer is a pod's), the inode of that namespace. The socket hooks follow a
// socket of another namespace only on the flows that such an interface
// carries from it (see netns_flow in icapwatch.c).
//
// The kernel names the peer's namespace by an nsid, a number in the
// watched namespace's own numbering; the inode is found by asking, for the
// namespaces bound under /run and those of the processes in /proc, which
// nsid each has there. A process's namespace file opens for root when the
// process is root's, and for any process with CAP_SYS_PTRACE; a namespace
// that cannot be opened is not found, and the sockets behind its
// interface are left out (their traffic is still watched).
type peerNamespaces struct {
	m      *ebpf.Map
	handle *netlink.Handle // opened in the watched namespace: its nsids
	log    hclog.Logger
	proc   string
	bound  []string // directories of bound namespaces (ip netns, container engines)
}

func newPeerNamespaces(m *ebpf.Map, proc string, log hclog.Logger) (*peerNamespaces, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle for namespace ids: %w", err)
	}
	return &peerNamespaces{m: m, handle: h, log: log, proc: proc,
		bound: []string{"/run/netns", "/run/docker/netns"}}, nil
}

// set records the namespace at the other end of the interface, or that it
// has none there; nsid is the interface's as it was last recorded, and the
// return value is the one to keep. A namespace not found yet (its pod's
// first process may come after the veth) is looked for again at the
// interface's next update.
func (p *peerNamespaces) set(attrs *netlink.LinkAttrs, nsid int) int {
	if attrs.NetNsID == nsid {
		return nsid
	}
	index := uint32(attrs.Index)
	if attrs.NetNsID < 0 {
		p.forget(index)
		return attrs.NetNsID
	}
	inode, err := p.inode(attrs.NetNsID)
	if err != nil {
		p.forget(index)
		p.log.Info("sockets behind the interface are not followed, only its traffic",
			"interface", attrs.Name, "netnsid", attrs.NetNsID, "reason", err)
		return -1
	}
	if err := p.m.Put(index, inode); err != nil {
		p.log.Warn("record the namespace behind an interface", "interface", attrs.Name, "error", err)
		return -1
	}
	p.log.Debug("namespace behind interface", "interface", attrs.Name, "netnsid", attrs.NetNsID, "inode", inode)
	return attrs.NetNsID
}

// forget removes what is recorded for an interface that went or whose
// other end left its namespace.
func (p *peerNamespaces) forget(index uint32) {
	if err := p.m.Delete(index); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		p.log.Warn("forget the namespace behind an interface", "ifindex", index, "error", err)
	}
}

// inode finds the namespace that has nsid in the watched namespace's
// numbering: among the bound ones first, then the processes'.
func (p *peerNamespaces) inode(nsid int) (uint32, error) {
	var files []string
	for _, dir := range p.bound {
		names, _ := filepath.Glob(filepath.Join(dir, "*"))
		files = append(files, names...)
	}
	entries, err := os.ReadDir(p.proc)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			files = append(files, filepath.Join(p.proc, e.Name(), "ns", "net"))
		}
	}
	seen := map[uint64]bool{}
	for _, name := range files {
		if inode, ok := p.match(name, nsid, seen); ok {
			return inode, nil
		}
	}
	return 0, fmt.Errorf("no namespace this agent can open under %s or /run has nsid %d", p.proc, nsid)
}

// match says whether the namespace file name has nsid, and its inode;
// seen skips namespaces already asked about.
func (p *peerNamespaces) match(name string, nsid int, seen map[uint64]bool) (uint32, bool) {
	fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, false
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || seen[st.Ino] {
		return 0, false
	}
	seen[st.Ino] = true
	if n, err := p.handle.GetNetNsIdByFd(fd); err != nil || n != nsid {
		return 0, false
	}
	return uint32(st.Ino), true
}

func (p *peerNamespaces) close() { p.handle.Close() }
