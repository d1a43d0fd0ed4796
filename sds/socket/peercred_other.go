//go:build !linux

package socket

import (
	"errors"
	"net"
)

// peerCred is only implemented on Linux (SO_PEERCRED).
func peerCred(*net.UnixConn) (Cred, error) { return Cred{}, errors.ErrUnsupported }
