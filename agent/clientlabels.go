package agent

import (
	"sync"
	"time"

	"github.com/icapwatch/icapwatch/agent/correlate"
	"github.com/prometheus/client_golang/prometheus"
)

// ClientOther is the client label of connections whose process name came
// when --max-clients names already had labels of their own.
const ClientOther = "other"

// clientLabels bounds the values of the client label. A process names
// itself as it likes, and one that renames itself before each connection
// would otherwise make a new series of every metric with a client label
// each time, for good: the first max names get a label of their own, the
// rest share ClientOther. A name no connection has had for the linger
// gives its label up (retire), with its series, so that a host whose
// applications come and go does not end up all "other".
//
// Events keep the real process name: only labels are bounded. The
// correlator's goroutine assigns labels; a scrape reads them.
type clientLabels struct {
	mu       sync.Mutex
	max      int
	linger   time.Duration
	used     map[string]time.Time // the names that have a label, and when one last had it
	overflow prometheus.Counter   // connections labelled other
}

func newClientLabels(max int, linger time.Duration, overflow prometheus.Counter) *clientLabels {
	return &clientLabels{max: max, linger: linger, used: map[string]time.Time{}, overflow: overflow}
}

// reserved are the labels that are not process names and never count
// against the bound.
func reserved(name string) bool {
	return name == correlate.ClientUnknown || name == correlate.ClientCanary || name == ClientOther
}

// assign is the label of a connection of the process name that takes it
// now, given one if there is room; a connection labelled other is
// counted.
func (c *clientLabels) assign(name string, now time.Time) string {
	if reserved(name) {
		return name
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.used[name]; ok || len(c.used) < c.max {
		c.used[name] = now
		return name
	}
	c.overflow.Inc()
	return ClientOther
}

// of is the label the process name has now, without giving it one.
func (c *clientLabels) of(name string) string {
	if reserved(name) {
		return name
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.used[name]; ok {
		return name
	}
	return ClientOther
}

// retire gives up the labels of the names that no open connection has
// (inUse) and that no connection took for the linger, and returns them:
// their series are to go.
func (c *clientLabels) retire(now time.Time, inUse map[string]bool) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var gone []string
	for name, last := range c.used {
		if inUse[name] {
			c.used[name] = now
			continue
		}
		if now.Sub(last) >= c.linger {
			delete(c.used, name)
			gone = append(gone, name)
		}
	}
	return gone
}
