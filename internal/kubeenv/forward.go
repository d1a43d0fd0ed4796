package kubeenv

import (
	"io"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
)

// Forwarder relays TCP connections to the API server, so a test can cut a
// client off from it (Stop) as a network partition or an apiserver outage
// would, without stopping the apiserver other tests share; hold the
// connections it accepts until Release, as an API server slow to answer;
// or delay what the API server sends (Delay), as a watch event slow to
// arrive.
type Forwarder struct {
	env     *Env
	ln      net.Listener
	target  string
	release func()
	open    chan struct{} // closed: connections are relayed
	delay   atomic.Int64  // nanoseconds each chunk from the API server is held

	mu    sync.Mutex
	conns []net.Conn
}

// Forward starts a Forwarder to e's API server, stopped when t ends.
func (e *Env) Forward(t testing.TB) *Forwarder {
	t.Helper()
	f := e.ForwardHeld(t)
	f.Release()
	return f
}

// ForwardHeld is Forward with the connections held until Release.
func (e *Env) ForwardHeld(t testing.TB) *Forwarder {
	t.Helper()
	u, err := url.Parse(e.Config.Host)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &Forwarder{env: e, ln: ln, target: u.Host, open: make(chan struct{})}
	f.release = sync.OnceFunc(func() { close(f.open) })
	go f.serve()
	t.Cleanup(f.Stop)
	return f
}

// Addr is the host:port clients dial instead of the API server's.
func (f *Forwarder) Addr() string { return f.ln.Addr().String() }

// Config is a copy of the Env's Config that reaches the API server through f.
func (f *Forwarder) Config() *rest.Config {
	c := rest.CopyConfig(f.env.Config)
	c.Host = "https://" + f.Addr()
	return c
}

// Release relays the connections held so far and every later one.
func (f *Forwarder) Release() { f.release() }

// Delay holds each chunk the API server sends, from now on, for d before
// relaying it, in order (0: relayed at once).
func (f *Forwarder) Delay(d time.Duration) { f.delay.Store(int64(d)) }

// Stop refuses new connections and cuts the open ones.
func (f *Forwarder) Stop() {
	f.release()
	f.ln.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func (f *Forwarder) serve() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.relay(c)
	}
}

func (f *Forwarder) relay(c net.Conn) {
	<-f.open
	up, err := net.Dial("tcp", f.target)
	if err != nil {
		c.Close()
		return
	}
	f.mu.Lock()
	f.conns = append(f.conns, up)
	f.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	f.relayDelayed(c, up)
	c.Close()
}

// relayDelayed copies from up to c, each chunk held for the Delay set
// when it was read.
func (f *Forwarder) relayDelayed(c, up net.Conn) {
	type chunk struct {
		b  []byte
		at time.Time // when to relay it
	}
	chunks := make(chan chunk, 1024)
	go func() {
		defer close(chunks)
		for {
			b := make([]byte, 32<<10)
			n, err := up.Read(b)
			if n > 0 {
				chunks <- chunk{b[:n], time.Now().Add(time.Duration(f.delay.Load()))}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range chunks {
		time.Sleep(time.Until(ch.at))
		if _, err := c.Write(ch.b); err != nil {
			up.Close()
			for range chunks { // let the reader end
			}
			return
		}
	}
}
