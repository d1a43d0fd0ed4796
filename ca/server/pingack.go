package server

import (
	"crypto/tls"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// pingAckHold is the longest an HTTP/2 PING acknowledgement waits to go
// out with the next answer (pingAckConn). gRPC clients ping to estimate
// bandwidth and, with keepalive, to check the connection; no keepalive
// timeout comes anywhere near this.
const pingAckHold = 10 * time.Millisecond

// grpcCredentials are the gRPC listener's transport credentials: TLS with
// tlsCfg, on connections that hold PING acks for pingAckHold.
func grpcCredentials(tlsCfg *tls.Config) credentials.TransportCredentials {
	return pingAckCreds{TransportCredentials: credentials.NewTLS(tlsCfg), hold: pingAckHold}
}

// maxCoalesced bounds the writes a held PING ack is sent with: an answer
// larger than this goes out after the ack in a write of its own, so the
// buffers below stay small.
const maxCoalesced = 8 << 10

// coalesceBufs hold an ack and the write it joins.
var coalesceBufs = sync.Pool{New: func() any { b := make([]byte, 0, pingAckLen+maxCoalesced); return &b }}

// pingAckLen is the length of an HTTP/2 PING frame: a 9-byte header and 8
// bytes of opaque data.
const pingAckLen = 9 + 8

// isPingAck reports whether b is exactly one HTTP/2 PING frame with the ACK
// flag (RFC 9113, 6.7) on stream 0.
func isPingAck(b []byte) bool {
	return len(b) == pingAckLen &&
		b[0] == 0 && b[1] == 0 && b[2] == 8 && // length 8
		b[3] == 0x6 && b[4]&0x1 != 0 && // PING, ACK
		b[5]&0x7f == 0 && b[6] == 0 && b[7] == 0 && b[8] == 0 // stream 0
}

// pingAckConn is a server connection, after TLS, that sends the PING
// acknowledgements gRPC writes on their own with the next answer instead.
//
// gRPC clients with gRPC's default bandwidth estimation (istio-agent's,
// the load generator's) send a PING after most answers, and gRPC's server
// writes its acknowledgement as soon as it reads it. On a busy connection
// (a node agent renewing the workloads behind it, a load generator) the
// next request is already being handled then; a handler that returns at
// once writes its answer first and both leave in one write, but meshca's
// handler waits for the group commit, so the ack left alone: one more TLS
// record and write(2) for the server, and one more wake-up and read for
// the client, per certificate. Held for at most hold, the ack goes with the
// next answer (or whatever is written next) in one write, ahead of it. On
// a connection with nothing more to send (an agent's one renewal) the ack
// goes alone after hold, which only lengthens the client's round-trip
// sample by that much.
type pingAckConn struct {
	net.Conn
	hold   time.Duration
	mu     sync.Mutex
	held   [pingAckLen]byte
	n      int // bytes in held: 0 or pingAckLen
	timer  *time.Timer
	closed bool
	err    error // a failed write of a held ack, returned by the next Write
}

// Write implements net.Conn.
func (c *pingAckConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, c.err
	}
	if c.n == 0 {
		if isPingAck(b) && !c.closed {
			c.n = copy(c.held[:], b)
			// A new timer per held ack, never the stopped one reset: the
			// runtime marks a reset timer still in its heap as modified,
			// and when it fires scans the whole heap, every request's
			// deadline included.
			c.timer = time.AfterFunc(c.hold, c.flushHeld)
			return len(b), nil
		}
		return c.Conn.Write(b)
	}
	c.timer.Stop()
	c.n = 0
	if len(b) > maxCoalesced {
		if _, err := c.Conn.Write(c.held[:]); err != nil {
			c.err = err
			return 0, err
		}
		return c.Conn.Write(b)
	}
	bp := coalesceBufs.Get().(*[]byte)
	buf := append(append((*bp)[:0], c.held[:]...), b...)
	n, err := c.Conn.Write(buf)
	*bp = buf[:0]
	coalesceBufs.Put(bp)
	if n -= pingAckLen; n < 0 {
		n = 0
	}
	return n, err
}

// flushHeld writes a held ack that no answer followed in time.
func (c *pingAckConn) flushHeld() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 || c.closed || c.err != nil {
		return
	}
	c.n = 0
	if _, err := c.Conn.Write(c.held[:]); err != nil {
		c.err = err
	}
}

// Close implements net.Conn. A held ack is dropped: the peer is going.
// The connection is closed first, without the lock: a Write blocked on a
// peer that does not read holds the lock, and closing is what ends it (gRPC
// closes transports so, under its server's own lock).
func (c *pingAckConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	c.closed, c.n = true, 0
	if c.timer != nil {
		c.timer.Stop()
	}
	c.mu.Unlock()
	return err
}

// pingAckCreds are TLS transport credentials whose server connections are
// pingAckConns holding acks for hold.
type pingAckCreds struct {
	credentials.TransportCredentials
	hold time.Duration
}

// ServerHandshake implements credentials.TransportCredentials.
func (p pingAckCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := p.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return &pingAckConn{Conn: conn, hold: p.hold}, info, nil
}

// Clone implements credentials.TransportCredentials.
func (p pingAckCreds) Clone() credentials.TransportCredentials {
	return pingAckCreds{TransportCredentials: p.TransportCredentials.Clone(), hold: p.hold}
}
