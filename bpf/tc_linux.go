package bpf

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/hashicorp/go-hclog"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Our clsact filters carry these names, so a new run can find and remove
// what a crashed one left (TCX links go away with the process by
// themselves).
const (
	filterPrefix  = "icapwatch"
	filterIngress = filterPrefix + "_ingress"
	filterEgress  = filterPrefix + "_egress"
	// tcPriority is ours: other cls_bpf users sit at 1 (tc(8)'s default
	// for the first filter) and upwards, and we return TC_ACT_UNSPEC, so
	// our place in the chain changes nothing for them. Instances share
	// the priority and differ by handle: cls_bpf runs every filter of a
	// priority in turn while they return TC_ACT_UNSPEC.
	tcPriority = 0x1ca9
	// maxInstances bounds the instances (agents, `icapwatch check`) that
	// can hold clsact filters in one network namespace at once.
	maxInstances = 64
)

type tcIface struct {
	name       string
	links      []link.Link
	filters    []*netlink.BpfFilter
	qdiscAdded bool
	egressOnly bool // loopback: egress sees every packet
	nsid       int  // the namespace at its other end, as last recorded (-1: none)
}

// tcAttacher keeps the classifier on the chosen interfaces, including
// interfaces that come up later, and takes it off again.
type tcAttacher struct {
	log             hclog.Logger
	ingress, egress *ebpf.Program
	peers           *peerNamespaces
	explicit        map[string]bool // nil: every interface that is up
	loopbackIngress bool

	// handle is this instance's cls_bpf filter handle, owned through
	// lock for as long as the instance runs (see takeInstanceLock).
	handle uint32
	lock   int

	mu      sync.Mutex
	mode    string // tcx or netlink, decided by the first attach in auto mode
	ifaces  map[int]*tcIface
	errs    map[string]string
	leftOut map[string]bool // interfaces already logged as left out
	closed  bool

	done chan struct{}
	wg   sync.WaitGroup
}

func newTCAttacher(cfg Config, ingress, egress *ebpf.Program, peerNS *ebpf.Map, log hclog.Logger) (*tcAttacher, error) {
	peers, err := newPeerNamespaces(peerNS, cfg.Proc, log)
	if err != nil {
		return nil, err
	}
	a := &tcAttacher{log: log, ingress: ingress, egress: egress, peers: peers, lock: -1,
		ifaces: map[int]*tcIface{}, errs: map[string]string{}, done: make(chan struct{})}
	if cfg.TC != ModeAuto {
		a.mode = cfg.TC
	}
	a.loopbackIngress = cfg.attachLoopbackIngress
	if len(cfg.Interfaces) > 0 {
		a.explicit = map[string]bool{}
		for _, name := range cfg.Interfaces {
			a.explicit[name] = true
		}
	}
	// TCX links need no lock, but the mode is known only after the first
	// attach, and the lock costs a socket.
	if a.handle, a.lock, err = takeInstanceLock(); err != nil {
		peers.close()
		return nil, err
	}
	log.Debug("took TC instance lock", "handle", a.handle)
	links, err := netlink.LinkList()
	if err != nil {
		a.releaseLock()
		peers.close()
		return nil, fmt.Errorf("list interfaces: %w", err)
	}
	removeStaleFilters(links, a.handle, log)

	// Subscribe before the first attach so no interface slips between.
	updates := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(updates, a.done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) {
			select {
			case <-a.done: // the subscription ends with an error when closed
			default:
				log.Warn("interface updates stopped: new interfaces are not followed", "error", err)
			}
		},
	}); err != nil {
		a.releaseLock()
		peers.close()
		return nil, fmt.Errorf("subscribe to interface updates: %w", err)
	}
	a.wg.Add(1)
	go a.follow(updates)

	found := map[string]bool{}
	attached := 0
	var errs []error
	for _, l := range links {
		name := l.Attrs().Name
		found[name] = true
		ok, err := a.choose(l)
		if err != nil {
			errs = append(errs, err)
		}
		if !ok {
			continue
		}
		if err := a.attach(l); err != nil {
			errs = append(errs, err)
			continue
		}
		attached++
	}
	for name := range a.explicit {
		if !found[name] {
			errs = append(errs, fmt.Errorf("interface %s does not exist", name))
		}
	}
	if a.explicit != nil && len(errs) > 0 || attached == 0 {
		a.close()
		if len(errs) == 0 {
			errs = append(errs, errors.New("no interface is up"))
		}
		return nil, fmt.Errorf("attach tc: %w", errors.Join(errs...))
	}
	for _, err := range errs {
		log.Warn("interface left out", "error", err)
	}
	return a, nil
}

// choose says whether to attach to an interface: given by name (or any,
// when none were given), up, and with frames the classifier can parse. The
// classifier reads a 14-byte Ethernet header (loopback has one too), so
// interfaces of other link types (WireGuard, tun, GRE, InfiniBand ...) are
// left out with a log line, and naming one explicitly is an error.
func (a *tcAttacher) choose(l netlink.Link) (bool, error) {
	attrs := l.Attrs()
	if a.explicit != nil && !a.explicit[attrs.Name] {
		return false, nil
	}
	if !ethernetFraming(attrs) {
		if a.explicit != nil {
			return false, fmt.Errorf("interface %s has link type %s: the classifier reads Ethernet frames only",
				attrs.Name, linkType(attrs))
		}
		if a.firstNotice(attrs.Name) {
			a.log.Info("interface left out: the classifier reads Ethernet frames only",
				"interface", attrs.Name, "link_type", linkType(attrs))
		}
		return false, nil
	}
	return attrs.Flags&net.FlagUp != 0, nil
}

// ethernetFraming: ARPHRD_ETHER (netlink's "ether": physical NICs, veth,
// bridges, bonds, VLANs, tap, VXLAN ...) or loopback.
func ethernetFraming(attrs *netlink.LinkAttrs) bool {
	return attrs.EncapType == "ether" || attrs.EncapType == "loopback" || attrs.Flags&net.FlagLoopback != 0
}

func linkType(attrs *netlink.LinkAttrs) string {
	if attrs.EncapType == "" {
		return "unknown"
	}
	return attrs.EncapType
}

func (a *tcAttacher) follow(updates <-chan netlink.LinkUpdate) {
	defer a.wg.Done()
	for {
		select {
		case <-a.done:
			return
		case u, ok := <-updates:
			if !ok {
				return
			}
			idx := int(u.Index)
			if u.Header.Type == unix.RTM_DELLINK {
				a.forget(idx)
				continue
			}
			a.mu.Lock()
			iface, have := a.ifaces[idx]
			if have {
				// Its other end may have moved to another namespace.
				iface.nsid = a.peers.set(u.Attrs(), iface.nsid)
			}
			a.mu.Unlock()
			if have {
				continue
			}
			if ok, err := a.choose(u.Link); !ok {
				if err != nil && a.firstNotice(u.Attrs().Name) {
					a.log.Warn("interface left out", "error", err)
				}
				continue
			}
			if err := a.attach(u.Link); err != nil {
				a.log.Warn("attach to new interface", "interface", u.Attrs().Name, "error", err)
			} else {
				a.log.Info("attached to new interface", "interface", u.Attrs().Name)
			}
		}
	}
}

// attach puts both programs on an interface. On loopback every packet
// leaves through egress and comes back through ingress: egress alone sees
// them all, once.
func (a *tcAttacher) attach(l netlink.Link) error {
	attrs := l.Attrs()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("closed")
	}
	if _, ok := a.ifaces[attrs.Index]; ok {
		return nil
	}
	// Flags are net.Flags, not IFF_ bits (IFF_LOOPBACK is FlagPointToPoint's bit).
	loopback := attrs.Flags&net.FlagLoopback != 0 && !a.loopbackIngress
	iface := &tcIface{name: attrs.Name, egressOnly: loopback, nsid: -1}
	var err error
	if a.mode == "" || a.mode == TCModeTCX {
		err = a.attachTCX(iface, attrs.Index, loopback)
		if a.mode == "" && errors.Is(err, ebpf.ErrNotSupported) {
			a.log.Info("TCX is not available, using clsact filters", "reason", err)
			a.mode = TCModeNetlink
		} else if a.mode == "" && err == nil {
			a.mode = TCModeTCX
		}
	}
	if a.mode == TCModeNetlink {
		err = a.attachFilters(iface, l, loopback)
	}
	if err != nil {
		err = needs(err, "CAP_NET_ADMIN")
		a.errs[attrs.Name] = err.Error()
		detach(iface, a.log)
		return fmt.Errorf("attach tc on %s: %w", attrs.Name, err)
	}
	delete(a.errs, attrs.Name)
	iface.nsid = a.peers.set(attrs, iface.nsid)
	a.ifaces[attrs.Index] = iface
	return nil
}

func (a *tcAttacher) attachTCX(iface *tcIface, index int, loopback bool) error {
	for _, h := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
		skip bool
	}{
		{a.ingress, ebpf.AttachTCXIngress, loopback},
		{a.egress, ebpf.AttachTCXEgress, false},
	} {
		if h.skip {
			continue
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: index, Program: h.prog,
			Attach: h.at, Anchor: link.Head()})
		if err != nil {
			return err
		}
		iface.links = append(iface.links, l)
	}
	return nil
}

func (a *tcAttacher) attachFilters(iface *tcIface, l netlink.Link, loopback bool) error {
	attrs := l.Attrs()
	qdisc := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: attrs.Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	switch err := netlink.QdiscAdd(qdisc); {
	case err == nil:
		iface.qdiscAdded = true
	case errors.Is(err, unix.EEXIST):
		// A clsact that holds only icapwatch filters was added by another
		// instance: whichever of us stops last removes it.
		iface.qdiscAdded = onlyOurFilters(l)
	default:
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	for _, h := range []struct {
		prog   *ebpf.Program
		parent uint32
		name   string
		skip   bool
	}{
		{a.ingress, netlink.HANDLE_MIN_INGRESS, filterIngress, loopback},
		{a.egress, netlink.HANDLE_MIN_EGRESS, filterEgress, false},
	} {
		if h.skip {
			continue
		}
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: attrs.Index, Parent: h.parent,
				Handle: a.handle, Protocol: unix.ETH_P_ALL, Priority: tcPriority},
			Fd: h.prog.FD(), Name: h.name, DirectAction: true,
		}
		if err := netlink.FilterReplace(f); err != nil {
			return fmt.Errorf("add %s filter: %w", h.name, err)
		}
		iface.filters = append(iface.filters, f)
	}
	return nil
}

// detach removes what we put on one interface; a vanished interface has
// nothing left to remove.
func detach(iface *tcIface, log hclog.Logger) error {
	var errs []error
	for _, l := range iface.links {
		if err := l.Close(); err != nil && !gone(err) {
			errs = append(errs, err)
		}
	}
	for _, f := range iface.filters {
		if err := netlink.FilterDel(f); err != nil && !gone(err) {
			errs = append(errs, fmt.Errorf("remove %s filter from %s: %w", f.Name, iface.name, err))
		}
	}
	if iface.qdiscAdded && len(iface.filters) > 0 {
		removeEmptyClsact(iface.filters[0].LinkIndex, iface.name, log)
	}
	iface.links, iface.filters = nil, nil
	return errors.Join(errs...)
}

func gone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENXIO)
}

// removeEmptyClsact deletes a clsact qdisc that no filter uses any more.
func removeEmptyClsact(index int, name string, log hclog.Logger) {
	l, err := netlink.LinkByIndex(index)
	if err != nil {
		return
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		if fs, err := netlink.FilterList(l, parent); err != nil || len(fs) > 0 {
			return
		}
	}
	qdisc := &netlink.GenericQdisc{QdiscType: "clsact", QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT}}
	if err := netlink.QdiscDel(qdisc); err != nil && !gone(err) {
		log.Warn("remove clsact qdisc", "interface", name, "error", err)
	}
}

// onlyOurFilters: the interface's clsact holds filters, all of them
// icapwatch's.
func onlyOurFilters(l netlink.Link) bool {
	n := 0
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		fs, err := netlink.FilterList(l, parent)
		if err != nil {
			return false
		}
		for _, f := range fs {
			if bf, ok := f.(*netlink.BpfFilter); !ok || !strings.HasPrefix(bf.Name, filterPrefix) {
				return false
			}
			n++
		}
	}
	return n > 0
}

// removeStaleFilters deletes filters of ours that a run which did not stop
// cleanly left behind, and the clsact qdiscs that held only them. A filter
// is stale when no live instance holds the lock of its handle; the handle
// this instance now holds (own) was a dead one's.
func removeStaleFilters(links []netlink.Link, own uint32, log hclog.Logger) {
	alive := map[uint32]bool{}
	for _, l := range links {
		removed := 0
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				continue // no clsact qdisc here
			}
			for _, f := range fs {
				bf, ok := f.(*netlink.BpfFilter)
				if !ok || !strings.HasPrefix(bf.Name, filterPrefix) {
					continue
				}
				h := bf.Handle
				if _, seen := alive[h]; !seen && h != own {
					live, err := lockHeld(h)
					if err != nil {
						log.Warn("cannot tell whether a filter's owner runs; left in place",
							"interface", l.Attrs().Name, "filter", bf.Name, "handle", h, "error", err)
						live = true
					}
					alive[h] = live
				}
				if alive[h] {
					continue // a running instance's
				}
				if err := netlink.FilterDel(bf); err != nil && !gone(err) {
					log.Warn("remove stale filter", "interface", l.Attrs().Name, "filter", bf.Name, "error", err)
					continue
				}
				removed++
				log.Info("removed stale filter", "interface", l.Attrs().Name, "filter", bf.Name, "handle", h)
			}
		}
		if removed > 0 {
			removeEmptyClsact(l.Attrs().Index, l.Attrs().Name, log)
		}
	}
}

// The instance lock: an abstract unix socket "@icapwatch/tc/N" bound for as
// long as the instance runs, N being the handle of its clsact filters.
// Abstract sockets belong to the network namespace, as TC filters do
// (containers with host networking share them), and the kernel releases
// them when the process ends, SIGKILL included: a handle whose socket can
// be bound has no live owner.
func lockName(handle uint32) string { return fmt.Sprintf("@icapwatch/tc/%d", handle) }

func bindLock(handle uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("instance lock socket: %w", err)
	}
	// A leading '@' makes x/sys/unix bind in the abstract namespace.
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: lockName(handle)}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// takeInstanceLock binds the first free lock and returns its handle.
func takeInstanceLock() (uint32, int, error) {
	for h := uint32(1); h <= maxInstances; h++ {
		fd, err := bindLock(h)
		if err == nil {
			return h, fd, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) {
			return 0, -1, fmt.Errorf("take TC instance lock %s: %w", lockName(h), err)
		}
	}
	return 0, -1, fmt.Errorf("take TC instance lock: %d icapwatch instances already run in this network namespace", maxInstances)
}

// lockHeld says whether a live instance holds handle's lock. The probe
// socket is closed at once, so a starting instance can take the handle.
func lockHeld(handle uint32) (bool, error) {
	fd, err := bindLock(handle)
	switch {
	case err == nil:
		unix.Close(fd)
		return false, nil
	case errors.Is(err, unix.EADDRINUSE):
		return true, nil
	default:
		return false, err
	}
}

func (a *tcAttacher) releaseLock() {
	if a.lock >= 0 {
		unix.Close(a.lock)
		a.lock = -1
	}
}

// firstNotice says whether an interface is left out for the first time:
// link updates come on every change of state, the log line once.
func (a *tcAttacher) firstNotice(name string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.leftOut[name] {
		return false
	}
	if a.leftOut == nil {
		a.leftOut = map[string]bool{}
	}
	a.leftOut[name] = true
	return true
}

func (a *tcAttacher) forget(index int) {
	a.mu.Lock()
	iface, ok := a.ifaces[index]
	delete(a.ifaces, index)
	a.mu.Unlock()
	if ok {
		a.peers.forget(uint32(index))
		detach(iface, a.log)
		a.log.Info("interface went away", "interface", iface.name)
	}
}

func (a *tcAttacher) status() []HookStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	var in, out, covered []string
	for _, iface := range a.ifaces {
		out = append(out, iface.name)
		switch {
		case len(iface.links)+len(iface.filters) == 2:
			in = append(in, iface.name)
		case iface.egressOnly:
			covered = append(covered, iface.name) // loopback: egress sees both directions
		}
	}
	sort.Strings(in)
	sort.Strings(out)
	var errs []string
	for name, e := range a.errs {
		errs = append(errs, name+": "+e)
	}
	sort.Strings(errs)
	mk := func(name string, ifaces []string) HookStatus {
		return HookStatus{Name: name, Attached: len(ifaces) > 0, Mode: a.mode,
			Detail: strings.Join(ifaces, ","), Error: strings.Join(errs, "; ")}
	}
	// The ingress hook is reported as attached only where it is. Where
	// every interface is loopback it is not needed: egress sees both
	// directions there.
	ingress := mk(HookTCIngress, in)
	if len(in) == 0 && len(covered) > 0 {
		ingress.Optional = true
		ingress.Detail = "not needed: egress on " + strings.Join(covered, ",") + " sees both directions"
	}
	return []HookStatus{ingress, mk(HookTCEgress, out)}
}

func (a *tcAttacher) close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.done)
	ifaces := a.ifaces
	a.ifaces = map[int]*tcIface{}
	a.mu.Unlock()
	a.wg.Wait()
	var errs []error
	for _, iface := range ifaces {
		errs = append(errs, detach(iface, a.log))
	}
	// Only now: with the lock free, a starting instance takes what is
	// left as stale.
	a.releaseLock()
	a.peers.close()
	return errors.Join(errs...)
}
