package icap

import (
	"context"
	"slices"
	"sync"
	"time"
)

// PoolStats is a snapshot of a client's pool.
type PoolStats struct {
	Open      int    // connections open or being opened
	Idle      int    // open and waiting for a request
	InUse     int    // carrying a request
	Exhausted uint64 // requests refused or timed out waiting: ErrPoolExhausted
	Dials     uint64
	Reuses    uint64
	Retries   uint64 // requests retried on a fresh connection after a reuse failure
	// ServerIdleTimeout is the idle age at which the server last closed an
	// idle connection: an estimate of its idle timeout; 0 until seen.
	ServerIdleTimeout time.Duration
}

// pool holds the client's connections. It never opens more than max; idle
// connections are reused last-in first-out, so the least recently used ones
// reach MaxIdle and are retired while the pool is lightly used.
type pool struct {
	max     int
	maxIdle time.Duration
	dial    func(context.Context, *Trace) (*conn, error)
	closed  func(*conn, CloseInfo) // reports to the observer

	mu      sync.Mutex
	idle    []*conn
	open    int
	inUse   int
	changed chan struct{} // closed and replaced whenever a slot may have freed
	done    bool
	stats   PoolStats
}

func newPool(max int, maxIdle time.Duration, dial func(context.Context, *Trace) (*conn, error), closed func(*conn, CloseInfo)) *pool {
	return &pool{max: max, maxIdle: maxIdle, dial: dial, closed: closed, changed: make(chan struct{})}
}

// broadcast wakes every waiter; the caller holds mu.
func (p *pool) broadcast() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// acquire returns an idle connection or a new one. With fresh set it never
// reuses. When the pool is full it fails with ErrPoolExhausted at once, or
// after waiting up to wait for a connection to come back.
func (p *pool) acquire(ctx context.Context, fresh bool, wait time.Duration, tr *Trace) (*conn, error) {
	var timeout <-chan time.Time
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		p.mu.Lock()
		if p.done {
			p.mu.Unlock()
			return nil, ErrClientClosed
		}
		if n := len(p.idle); n > 0 && !fresh {
			c := p.idle[n-1]
			p.idle = p.idle[:n-1]
			c.idle = false
			c.retire.Stop()
			p.inUse++
			idleAge := time.Since(c.idleSince)
			p.mu.Unlock()
			if err := c.stopWatch(); err != nil {
				// The server closed it between our last look and now.
				ci := c.classify(err)
				ci.Idle, ci.IdleAge = true, idleAge
				p.discard(c, ci)
				continue
			}
			p.mu.Lock()
			p.stats.Reuses++
			p.mu.Unlock()
			tr.Reused, tr.IdleAge = true, idleAge
			return c, nil
		}
		if p.open < p.max {
			p.open++
			p.inUse++
			p.stats.Dials++
			p.mu.Unlock()
			c, err := p.dial(ctx, tr)
			if err != nil {
				p.mu.Lock()
				p.open--
				p.inUse--
				p.broadcast()
				p.mu.Unlock()
				return nil, err
			}
			return c, nil
		}
		if fresh && len(p.idle) > 0 {
			// A retry needs a new connection and the pool is full of idle
			// ones: give up the oldest idle one to make room.
			c := p.idle[0]
			p.take(c)
			p.mu.Unlock()
			p.closeIdle(c)
			continue
		}
		if timeout == nil {
			p.stats.Exhausted++
			p.mu.Unlock()
			return nil, ErrPoolExhausted
		}
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timeout:
			p.mu.Lock()
			p.stats.Exhausted++
			p.mu.Unlock()
			return nil, ErrPoolExhausted
		}
	}
}

// release returns a connection after a request. A connection that is not
// reusable is closed with ci; a reusable one goes idle with a read posted.
func (p *pool) release(c *conn, reusable bool, ci CloseInfo) {
	p.mu.Lock()
	p.inUse--
	if !reusable || p.done {
		p.open--
		p.broadcast()
		p.mu.Unlock()
		if reusable {
			ci = CloseInfo{Initiator: "client", How: "fin", Reason: "client_closed"}
		}
		c.close()
		p.closed(c, ci)
		return
	}
	c.idle = true
	c.idleSince = time.Now()
	if c.sniff != nil {
		c.idleRecords = c.sniff.records
	}
	c.idleGen++
	gen := c.idleGen
	c.retire = time.AfterFunc(p.maxIdle, func() { p.retireIdle(c, gen) })
	p.idle = append(p.idle, c)
	c.startWatch(func(err error) { p.watchEnded(c, err) })
	p.broadcast()
	p.mu.Unlock()
}

// discard closes a connection that acquire took but found dead.
func (p *pool) discard(c *conn, ci CloseInfo) {
	p.mu.Lock()
	p.inUse--
	p.open--
	p.noteServerIdleClose(ci)
	p.broadcast()
	p.mu.Unlock()
	c.close()
	p.closed(c, ci)
}

// take removes c from the idle list if it is still there; the caller holds
// mu. Only the party that takes a connection may close it.
func (p *pool) take(c *conn) bool {
	if !c.idle {
		return false
	}
	c.idle = false
	c.retire.Stop()
	p.idle = slices.DeleteFunc(p.idle, func(x *conn) bool { return x == c })
	p.open--
	p.broadcast()
	return true
}

// watchEnded runs when the posted read on an idle connection ends by itself:
// the server closed, reset or sent something.
func (p *pool) watchEnded(c *conn, err error) {
	p.mu.Lock()
	if !p.take(c) {
		p.mu.Unlock()
		return
	}
	ci := c.classify(err)
	ci.Idle, ci.IdleAge = true, time.Since(c.idleSince)
	p.noteServerIdleClose(ci)
	p.mu.Unlock()
	c.close()
	p.closed(c, ci)
}

// noteServerIdleClose records the idle age of a server's close of an idle
// connection; the caller holds mu.
func (p *pool) noteServerIdleClose(ci CloseInfo) {
	if ci.Idle && ci.Initiator == "server" {
		p.stats.ServerIdleTimeout = ci.IdleAge
	}
}

// retireIdle closes a connection idle for MaxIdle, before the server's own
// idle timeout can race a request on it. gen tells a timer that fired while
// the connection was taken from one set when it went idle again.
func (p *pool) retireIdle(c *conn, gen uint64) {
	p.mu.Lock()
	if c.idleGen != gen || !p.take(c) {
		p.mu.Unlock()
		return
	}
	age := time.Since(c.idleSince)
	p.mu.Unlock()
	c.close()
	p.closed(c, CloseInfo{Initiator: "client", How: "fin", Reason: "idle_retired", Idle: true, IdleAge: age})
}

func (p *pool) noteRetry() {
	p.mu.Lock()
	p.stats.Retries++
	p.mu.Unlock()
}

func (p *pool) snapshot() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.stats
	s.Open, s.Idle, s.InUse = p.open, len(p.idle), p.inUse
	return s
}

// shutdown closes idle connections now and busy ones when they come back.
func (p *pool) shutdown() {
	p.mu.Lock()
	p.done = true
	idle := slices.Clone(p.idle)
	for _, c := range idle {
		p.take(c)
	}
	p.mu.Unlock()
	for _, c := range idle {
		p.closeIdle(c)
	}
}

// closeIdle closes a connection the client took from the idle list.
func (p *pool) closeIdle(c *conn) {
	c.close()
	p.closed(c, CloseInfo{Initiator: "client", How: "fin", Reason: "client_closed", Idle: true, IdleAge: time.Since(c.idleSince)})
}
