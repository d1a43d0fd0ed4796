package kubeenv

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"

	"k8s.io/client-go/rest"
)

// Forwarder relays TCP connections to the API server, so a test can cut a
// client off from it (Stop) as a network partition or an apiserver outage
// would, without stopping the apiserver other tests share; or hold the
// connections it accepts until Release, as an API server slow to answer.
type Forwarder struct {
	env     *Env
	ln      net.Listener
	target  string
	release func()
	open    chan struct{} // closed: connections are relayed

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
	io.Copy(c, up)
	c.Close()
}
