package agent

import (
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
	"golang.org/x/sys/unix"
)

// SockDiag reads the TCP sockets on watched ports through netlink
// sock_diag, with their owners from /proc.
type SockDiag struct {
	ports    map[uint16]bool
	proc     string // /proc, or the host's /proc mounted elsewhere
	tracker  *diagTracker
	owners   map[uint32]procOwner // by socket inode, from /proc: see needWalk
	nextWalk time.Time            // no walk of /proc before
	filter   []byte               // the ports as inet_diag bytecode
	buf      []byte               // netlink replies
	last     int                  // sockets in the last snapshot
}

// NewSockDiag watches the given ports. As the source, it is the fallback
// where no kernel probes run, and derives exchanges from the sockets' timers.
func NewSockDiag(ports []uint16, proc string, source bool) *SockDiag {
	d := &SockDiag{ports: map[uint16]bool{}, proc: proc, tracker: newDiagTracker(source)}
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

// Sockets lists the sockets on watched ports, IPv4 and IPv6. The slice
// is not kept between polls: with a hundred thousand sockets it is tens
// of megabytes that the collector would count as live, and let the heap
// grow twice that before it collects.
func (d *SockDiag) Sockets() ([]Socket, error) {
	if d.filter == nil {
		d.buf = make([]byte, diagReceiveBuffer)
		ports := make([]uint16, 0, len(d.ports))
		for p := range d.ports {
			ports = append(ports, p)
		}
		d.filter = portFilter(ports)
	}
	out := make([]Socket, 0, d.last+d.last/8)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		var err error
		if out, err = diagDump(family, d.filter, d.buf, out, d.ports); err != nil {
			return nil, err
		}
	}
	d.last = len(out)
	if d.needWalk(out) {
		start := time.Now()
		want := make(map[uint32]bool, len(out))
		for _, s := range out {
			want[s.Inode] = true
		}
		d.owners = socketOwners(d.proc, want)
		for _, s := range out {
			if _, ok := d.owners[s.Inode]; !ok {
				d.owners[s.Inode] = procOwner{} // ownerless: no walk for it again
			}
		}
		d.nextWalk = start.Add(10 * time.Since(start))
	}
	for i := range out {
		o := d.owners[out[i].Inode]
		out[i].PID, out[i].Comm = o.pid, o.comm
	}
	return out, nil
}

// needWalk says whether to walk /proc for the sockets' owners. Beside the
// kernel probes one walk at the start is enough: the kernel names the
// process of each new connection. As the source, /proc is walked again
// when a socket's inode is new, but not sooner than ten times as long as
// the last walk took: on a host with a hundred thousand open sockets a
// walk takes a second, and new connections come in bursts. Inodes that no
// process showed (another PID namespace, a socket being closed) are
// remembered as ownerless, so that they do not call for a walk.
func (d *SockDiag) needWalk(sockets []Socket) bool {
	if d.owners == nil {
		return len(sockets) > 0
	}
	if !d.tracker.source || time.Now().Before(d.nextWalk) {
		return false
	}
	for _, s := range sockets {
		if _, ok := d.owners[s.Inode]; !ok && s.Inode != 0 {
			return true
		}
	}
	return false
}

type procOwner struct {
	pid  uint32
	comm string
}

// socketOwners maps the wanted socket inodes to the processes holding
// them, from the /proc/PID/fd links ("socket:[INODE]"). Processes that
// vanish or cannot be read are passed over. What it reads is bounded,
// whatever --proc names: directories a chunk at a time, and of a comm file
// its first bytes, without blocking on a FIFO.
func socketOwners(proc string, want map[uint32]bool) map[uint32]procOwner {
	owners := map[uint32]procOwner{}
	eachName(proc, func(dir string) {
		pid, err := strconv.ParseUint(dir, 10, 32)
		if err != nil {
			return
		}
		fdDir := filepath.Join(proc, dir, "fd")
		comm, named := "", false
		eachName(fdDir, func(fd string) {
			target, err := os.Readlink(filepath.Join(fdDir, fd))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				return
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 32)
			if err != nil || !want[uint32(inode)] {
				return
			}
			if !named {
				comm, named = procComm(filepath.Join(proc, dir, "comm")), true
			}
			if _, seen := owners[uint32(inode)]; !seen {
				owners[uint32(inode)] = procOwner{uint32(pid), comm}
			}
		})
	})
	return owners
}

// procDirChunk is how many names of a directory are read at a time.
const procDirChunk = 256

// eachName calls fn with each name in a directory, reading it in chunks:
// a process with a million open files costs no million-entry slice.
func eachName(dir string, fn func(name string)) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	for {
		names, err := f.Readdirnames(procDirChunk)
		for _, n := range names {
			fn(n)
		}
		if err != nil || len(names) == 0 {
			return
		}
	}
}

// commMax bounds the read of a comm file: the kernel's are 16 bytes.
const commMax = 64

// procComm reads a process name: at most commMax bytes, never blocking
// (a FIFO under a --proc that is not the kernel's), made printable UTF-8.
func procComm(path string) string {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY, 0)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return ""
	}
	b := make([]byte, commMax)
	n, _ := io.ReadFull(f, b)
	return observe.Printable(strings.TrimSpace(string(b[:n])))
}
