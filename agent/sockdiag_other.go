//go:build !linux

package agent

import (
	"errors"
	"time"

	"github.com/icapwatch/icapwatch/agent/observe"
)

// SockDiag needs Linux's netlink sock_diag.
type SockDiag struct{}

// NewSockDiag returns a reader that always fails.
func NewSockDiag([]uint16, string, bool) *SockDiag { return &SockDiag{} }

// Poll reports that sock_diag needs Linux.
func (*SockDiag) Poll(time.Time, func(observe.Observation)) error {
	return errors.New("sock_diag needs Linux")
}
