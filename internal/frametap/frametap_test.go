package frametap

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
)

func TestCounts(t *testing.T) {
	for _, preface := range []bool{false, true} {
		var wire bytes.Buffer
		if preface {
			wire.WriteString(http2.ClientPreface)
		}
		fr := http2.NewFramer(&wire, nil)
		_ = fr.WritePing(false, [8]byte{1})
		_ = fr.WritePing(true, [8]byte{1})
		_ = fr.WriteWindowUpdate(0, 100)
		a, b := net.Pipe()
		go func() { _, _ = a.Write(wire.Bytes()); _ = a.Close() }()
		c := New(b, preface)
		_, _ = io.Copy(io.Discard, c)
		var counts map[http2.FrameType]int
		var pings int
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if counts, pings = c.Counts(); counts[http2.FrameWindowUpdate] == 1 {
				break
			}
		}
		_ = c.Close()
		if counts[http2.FramePing] != 2 || pings != 1 || counts[http2.FrameWindowUpdate] != 1 {
			t.Errorf("preface %v: counts %v, %d pings not acks; want 2 PINGs (1 not an ack) and 1 WINDOW_UPDATE", preface, counts, pings)
		}
	}
}
