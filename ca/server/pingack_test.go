package server

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshca/meshca/internal/testca"
)

// writesConn records each Write as it arrives, so a test sees how the bytes
// were split into writes; it fails writes once failing is set.
type writesConn struct {
	net.Conn // nil: only Write and Close are called
	mu       sync.Mutex
	writes   [][]byte
	failing  bool
	closed   bool
}

func (w *writesConn) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failing {
		return 0, errors.New("broken pipe")
	}
	w.writes = append(w.writes, slices.Clone(b))
	return len(b), nil
}

func (w *writesConn) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	return nil
}

func (w *writesConn) got() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.writes)
}

// frame encodes one HTTP/2 frame with golang.org/x/net/http2's framer.
func frame(t *testing.T, write func(*http2.Framer) error) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := write(http2.NewFramer(&buf, nil)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestPingAckConn: a write that is one PING acknowledgement waits for the
// next write and goes out with it, or alone after the hold; every other
// write goes out as it is, in order.
func TestPingAckConn(t *testing.T) {
	ack := frame(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}) })
	ping := frame(t, func(f *http2.Framer) error { return f.WritePing(false, [8]byte{1}) })
	settingsAck := frame(t, func(f *http2.Framer) error { return f.WriteSettingsAck() })
	answer := frame(t, func(f *http2.Framer) error { return f.WriteData(1, true, bytes.Repeat([]byte{'x'}, 2000)) })
	big := frame(t, func(f *http2.Framer) error { return f.WriteData(1, false, bytes.Repeat([]byte{'y'}, maxCoalesced)) })
	eightData := frame(t, func(f *http2.Framer) error { return f.WriteData(1, false, make([]byte, 8)) }) // 17 bytes, not a PING
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

	tests := []struct {
		name   string
		writes [][]byte
		wait   bool     // hold 1 ms, and wait for the held ack to go out alone (else hold an hour)
		after  [][]byte // written after the wait
		want   [][]byte
	}{
		{name: "ack goes with the answer", writes: [][]byte{ack, answer}, want: [][]byte{cat(ack, answer)}},
		{name: "ack alone after the hold", writes: [][]byte{ack}, wait: true, want: [][]byte{ack}},
		{name: "ack, hold, then the answer", writes: [][]byte{ack}, wait: true, after: [][]byte{answer}, want: [][]byte{ack, answer}},
		{name: "a PING that is not an ack is not held", writes: [][]byte{ping}, want: [][]byte{ping}},
		{name: "a SETTINGS ack is not held", writes: [][]byte{settingsAck}, want: [][]byte{settingsAck}},
		{name: "a 17-byte DATA frame is not held", writes: [][]byte{eightData}, want: [][]byte{eightData}},
		{name: "ack with other frames in one write is not held", writes: [][]byte{cat(ack, answer)}, want: [][]byte{cat(ack, answer)}},
		{name: "an answer too large to join goes after the ack", writes: [][]byte{ack, big}, want: [][]byte{ack, big}},
		{name: "two acks: the second joins nothing held", writes: [][]byte{ack, ack, answer}, want: [][]byte{cat(ack, ack), answer}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &writesConn{}
			c := &pingAckConn{Conn: w, hold: time.Hour}
			if tt.wait {
				c.hold = time.Millisecond
			}
			for _, b := range tt.writes {
				if n, err := c.Write(b); n != len(b) || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", len(b), n, err)
				}
			}
			if tt.wait {
				deadline := time.Now().Add(5 * time.Second)
				for len(w.got()) == 0 && time.Now().Before(deadline) {
					time.Sleep(time.Millisecond)
				}
			}
			for _, b := range tt.after {
				if n, err := c.Write(b); n != len(b) || err != nil {
					t.Fatalf("Write(%d bytes) = %d, %v", len(b), n, err)
				}
			}
			if got := w.got(); !slices.EqualFunc(got, tt.want, bytes.Equal) {
				t.Errorf("writes = %d %v, want %d %v", len(got), lens(got), len(tt.want), lens(tt.want))
			}
		})
	}
}

func lens(bs [][]byte) []int {
	n := make([]int, len(bs))
	for i, b := range bs {
		n[i] = len(b)
	}
	return n
}

// TestPingAckConnFailures: a held ack whose write fails makes the next
// Write fail; closing the connection drops a held ack, and returns at once
// even while a write is blocked on a peer that does not read (gRPC closes
// its transports so, under its server's lock).
func TestPingAckConnFailures(t *testing.T) {
	ack := frame(t, func(f *http2.Framer) error { return f.WritePing(true, [8]byte{9}) })
	waitFor := func(t *testing.T, what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting: %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}
	t.Run("failed flush fails the next write", func(t *testing.T) {
		c := &pingAckConn{Conn: &writesConn{failing: true}, hold: time.Millisecond}
		if _, err := c.Write(ack); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the held ack's flush", func() bool {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.err != nil
		})
		if _, err := c.Write([]byte("next")); err == nil {
			t.Error("Write after a failed flush succeeded")
		}
	})
	t.Run("close drops the held ack", func(t *testing.T) {
		w := &writesConn{}
		c := &pingAckConn{Conn: w, hold: time.Millisecond}
		if _, err := c.Write(ack); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // past the hold: a flush would have written by now
		if got := w.got(); len(got) != 0 || !w.closed {
			t.Errorf("after Close: writes %v, closed %v; want none, true", lens(got), w.closed)
		}
	})
	for _, tt := range []struct {
		name  string
		block func(c *pingAckConn) error // blocks on the peer that does not read
	}{
		{"close during a blocked write", func(c *pingAckConn) error {
			_, err := c.Write(make([]byte, 4096))
			return err
		}},
		{"close during a blocked flush", func(c *pingAckConn) error {
			if _, err := c.Write(ack); err != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond) // the flush is now blocked
			_, err := c.Write([]byte("after"))
			return err
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mine, peer := net.Pipe()
			defer peer.Close()
			c := &pingAckConn{Conn: mine, hold: time.Millisecond}
			errs := make(chan error, 1)
			go func() { errs <- tt.block(c) }()
			time.Sleep(20 * time.Millisecond) // let it block
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			select {
			case <-closed:
			case <-time.After(5 * time.Second):
				t.Fatal("Close is stuck behind a blocked write")
			}
			select {
			case err := <-errs:
				if err == nil {
					t.Error("the blocked write succeeded though nobody read it")
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the blocked write never returned")
			}
		})
	}
}

// TestGRPCCredentialsHoldPingAcks: the gRPC listener's credentials do TLS
// and hand gRPC connections that hold PING acks for pingAckHold.
func TestGRPCCredentialsHoldPingAcks(t *testing.T) {
	svid := testca.New(t).Issue(t, 1)
	cert := tls.Certificate{PrivateKey: svid.Key, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	creds := grpcCredentials(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	serverEnd, clientEnd := net.Pipe()
	defer clientEnd.Close()
	go func() {
		// Whom the client reaches is not what this test checks.
		c := tls.Client(clientEnd, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12})
		if c.Handshake() == nil {
			_, _ = io.Copy(io.Discard, c) // read what the server sends after its handshake, until it closes
		}
	}()
	conn, info, err := creds.ServerHandshake(serverEnd)
	if err != nil {
		t.Fatalf("ServerHandshake: %v", err)
	}
	defer conn.Close()
	pc, ok := conn.(*pingAckConn)
	if !ok || pc.hold != pingAckHold {
		t.Fatalf("ServerHandshake gave a %T (hold %v), want a *pingAckConn holding acks %v", conn, pc.hold, pingAckHold)
	}
	if info.AuthType() != "tls" {
		t.Errorf("AuthInfo %q, want gRPC's TLS info", info.AuthType())
	}
	if cl, ok := creds.Clone().(pingAckCreds); !ok || cl.hold != pingAckHold {
		t.Errorf("Clone() = %T, want pingAckCreds holding %v", creds.Clone(), pingAckHold)
	}
}
