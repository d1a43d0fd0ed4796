package agent

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer answers A queries for one name with its addresses over UDP
// on 127.0.0.1, and every other query with no record: a real DNS server
// for gRPC's DNS resolver, which a target dns://<server>/<name>:<port>
// sends its queries to.
type dnsServer struct {
	conn  net.PacketConn
	name  dnsmessage.Name
	addrs []netip.Addr
	wg    sync.WaitGroup
}

func newDNSServer(t *testing.T, name string, addrs ...netip.Addr) *dnsServer {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{conn: conn, name: dnsmessage.MustNewName(name + "."), addrs: addrs}
	s.wg.Go(s.serve)
	t.Cleanup(func() { _ = conn.Close(); s.wg.Wait() })
	return s
}

func (s *dnsServer) addr() string { return s.conn.LocalAddr().String() }

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if resp, err := s.answer(buf[:n]); err == nil {
			_, _ = s.conn.WriteTo(resp, from)
		}
	}
}

func (s *dnsServer) answer(query []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(query)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	if q.Type == dnsmessage.TypeA && q.Name == s.name {
		for _, a := range s.addrs {
			rh := dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 1}
			if err := b.AResource(rh, dnsmessage.AResource{A: a.As4()}); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}

// relaysOnOnePort puts a relay to each target on 127.0.0.<i+1>:<port>,
// one port for all (what one DNS name with several A records leads to),
// and returns the port.
func relaysOnOnePort(t *testing.T, targets []string) (port int) {
	t.Helper()
	for range 20 {
		first := newRelay(t, targets[0])
		port = first.ln.Addr().(*net.TCPAddr).Port
		err := func() error {
			for i, target := range targets[1:] {
				if _, err := newRelayAt(t, fmt.Sprintf("127.0.0.%d:%d", i+2, port), target); err != nil {
					return err
				}
			}
			return nil
		}()
		if err == nil {
			return port
		}
		t.Logf("port %d taken on another loopback address (%v): trying another", port, err)
	}
	t.Fatal("no port free on 127.0.0.1 to 127.0.0.3 after 20 tries")
	return 0
}
