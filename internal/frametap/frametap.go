// Package frametap counts the HTTP/2 frames a peer sends over a
// connection, after TLS, for tests that check what a gRPC client or
// server puts on the wire.
package frametap

import (
	"io"
	"net"
	"sync"

	"golang.org/x/net/http2"
)

// Conn is a connection whose reads are also parsed as HTTP/2 frames.
type Conn struct {
	net.Conn
	w *io.PipeWriter

	mu     sync.Mutex
	counts map[http2.FrameType]int
	pings  int // PING frames that are not acknowledgements
}

// New taps c: what is read from it is counted, frame by frame. preface
// says the stream read starts with the client's connection preface (c is
// the server's end).
func New(c net.Conn, preface bool) *Conn {
	r, w := io.Pipe()
	t := &Conn{Conn: c, w: w, counts: map[http2.FrameType]int{}}
	go t.parse(r, preface)
	return t
}

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		_, _ = c.w.Write(b[:n]) // the parser reads until the pipe closes
	}
	return n, err
}

// Close closes the connection and ends the parser.
func (c *Conn) Close() error {
	_ = c.w.Close()
	return c.Conn.Close()
}

// Counts returns how many frames of each type were read so far, and how
// many of the PINGs were not acknowledgements.
func (c *Conn) Counts() (map[http2.FrameType]int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[http2.FrameType]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m, c.pings
}

func (c *Conn) parse(r *io.PipeReader, preface bool) {
	defer func() { _, _ = io.Copy(io.Discard, r) }() // never block the connection's reads
	if preface {
		if _, err := io.ReadFull(r, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
	}
	fr := http2.NewFramer(nil, r)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		c.mu.Lock()
		c.counts[f.Header().Type]++
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			c.pings++
		}
		c.mu.Unlock()
	}
}
