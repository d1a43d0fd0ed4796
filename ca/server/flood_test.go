package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/ca/server"
)

// heapInUse is the live heap after a collection.
func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// settle waits until at most want goroutines run, or closedWithin passes,
// and returns the count.
func settle(want int) int {
	deadline := time.Now().Add(closedWithin)
	for {
		n := runtime.NumGoroutine()
		if n <= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestFloodOfUnauthenticatedConnections: 10,000 connection attempts from
// 127.0.0.2 that never authenticate (most connect and leave, send garbage
// or half a ClientHello; one in 20 completes a handshake and presents a
// bad token or nothing) while 500 more connections sit silent. Goroutines, descriptors
// and heap return to their baseline afterwards, the silent connections are
// dropped at the handshake deadline, bad tokens are throttled to 429 past
// the per-source burst, and an authenticated client on 127.0.0.1 is served
// throughout.
func TestFloodOfUnauthenticatedConnections(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the listeners for a few seconds")
	}
	const (
		attempts  = 10_000
		workers   = 32
		silent    = 500
		handshake = 2 * time.Second // RequestTimeout bounds the TLS handshake
	)
	p := startPlaneWith(t, filepath.Join(t.TempDir(), "meshca.db"), func(c *server.Config) {
		c.RequestTimeout, c.IdleTimeout, c.MaxConnections = handshake, 200*time.Millisecond, 1_000
	})
	good := csrFor(t, newKey(t), fooID)
	legit := grpcClient(t, p, nil)
	if _, err := legit.Sign(context.Background(), good, 0, fooToken); err != nil {
		t.Fatal(err)
	}
	g0, h0, f0 := settle(0), heapInUse(), fds(t)

	// The authenticated client, every 50ms during the flood.
	var served, refused atomic.Int64
	var slowest atomic.Int64
	stop := make(chan struct{})
	var legitDone sync.WaitGroup
	legitDone.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			start := time.Now()
			_, err := legit.Sign(ctx, good, 0, fooToken)
			cancel()
			if err != nil {
				// On a loaded machine a call may time out; it must never be
				// mistaken for the flood (throttled or unauthenticated).
				refused.Add(1)
				if c := status.Code(err); c != codes.DeadlineExceeded && c != codes.Unavailable {
					t.Errorf("authenticated client during the flood: %v", err)
				}
				t.Logf("authenticated client during the flood: %v", err)
				continue
			}
			served.Add(1)
			if d := int64(time.Since(start)); d > slowest.Load() {
				slowest.Store(d)
			}
		}
	})
	// Peaks, sampled.
	var peakG, peakF atomic.Int64
	sampling := make(chan struct{})
	go func() {
		defer close(sampling)
		for {
			if n := int64(runtime.NumGoroutine()); n > peakG.Load() {
				peakG.Store(n)
			}
			if n := int64(fds(t)); n > peakF.Load() {
				peakF.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()

	grpcAddr, httpsAddr := p.srv.Addr("grpc").String(), p.srv.Addr("https").String()
	tlsCfg := &tls.Config{RootCAs: p.roots(), ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(64)}
	var held []net.Conn
	for i := range silent {
		c, err := fromOther.Dial("tcp", []string{grpcAddr, httpsAddr}[i%2])
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	start := time.Now()
	var statuses sync.Map // HTTP status -> *atomic.Int64
	count := func(code int) {
		v, _ := statuses.LoadOrStore(code, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	next := make(chan int)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for i := range next {
				floodAttempt(i, grpcAddr, httpsAddr, tlsCfg, count)
			}
		})
	}
	for i := range attempts {
		next <- i
	}
	close(next)
	wg.Wait()
	flood := time.Since(start)
	// The silent ones are dropped by the server at the handshake deadline.
	if wait := handshake + 500*time.Millisecond - time.Since(start); wait > 0 {
		time.Sleep(wait)
	}
	heldDropped := 0
	for _, c := range held {
		c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == io.EOF {
			heldDropped++
		}
		c.Close()
	}
	close(stop)
	legitDone.Wait()
	<-sampling

	g1 := settle(g0 + 10)
	f1, h1 := fds(t), heapInUse()
	var codes []string
	statuses.Range(func(k, v any) bool {
		codes = append(codes, fmt.Sprintf("%d×%d", v.(*atomic.Int64).Load(), k))
		return true
	})
	t.Logf("flood: %d attempts from 127.0.0.2 in %s (+%d silent connections), HTTP answers %s", attempts, flood.Round(time.Millisecond), silent, strings.Join(codes, " "))
	t.Logf("goroutines: %d before, %d peak, %d after", g0, peakG.Load(), g1)
	t.Logf("descriptors (both ends, client and server share the process): %d before, %d peak, %d after", f0, peakF.Load(), f1)
	t.Logf("heap in use: %.1f MiB before, %.1f MiB after", float64(h0)/(1<<20), float64(h1)/(1<<20))
	t.Logf("silent connections dropped by the server at the %s handshake deadline: %d of %d", handshake, heldDropped, silent)
	t.Logf("authenticated client: %d calls served, %d refused, slowest %s", served.Load(), refused.Load(), time.Duration(slowest.Load()).Round(time.Millisecond))

	if served.Load() == 0 || refused.Load() > served.Load()/10 {
		t.Errorf("authenticated client: %d served, %d refused during the flood", served.Load(), refused.Load())
	}
	if v, ok := statuses.Load(http.StatusTooManyRequests); !ok || v.(*atomic.Int64).Load() == 0 {
		t.Errorf("no bad token was throttled (429)")
	}
	if heldDropped != silent {
		t.Errorf("%d of %d silent connections still open after the handshake deadline", silent-heldDropped, silent)
	}
	if g1 > g0+10 { // the authenticated client may be reconnecting
		t.Errorf("%d goroutines after the flood, %d before", g1, g0)
	}
	if f1 > f0+10 {
		t.Errorf("%d descriptors after the flood, %d before", f1, f0)
	}
	if h1 > h0+32<<20 {
		t.Errorf("heap grew from %d to %d bytes", h0, h1)
	}
	if v, ok := statuses.Load(http.StatusOK); ok {
		t.Errorf("%d bad tokens were answered 200", v.(*atomic.Int64).Load())
	}
	// A call that timed out at the client may have been issued.
	if n := int64(len(p.records(t))); n < 1+served.Load() || n > 1+served.Load()+refused.Load() {
		t.Errorf("%d issuance records, want %d to %d (the authenticated calls only)", n, 1+served.Load(), 1+served.Load()+refused.Load())
	}
}

// floodAttempt is the i-th unauthenticated connection attempt.
func floodAttempt(i int, grpcAddr, httpsAddr string, tlsCfg *tls.Config, count func(int)) {
	addr := []string{grpcAddr, httpsAddr}[(i/2)%2]
	c, err := fromOther.Dial("tcp", addr)
	if err != nil {
		count(-1) // dial refused
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// One attempt in 20 completes a TLS handshake: that is the costly kind
	// (some 10ms of CPU under -race), and 500 of them are plenty to spend
	// the source's burst.
	switch i % 20 {
	default: // connect and leave
	case 1, 5, 9, 13, 17: // garbage instead of a TLS ClientHello
		c.Write([]byte(strings.Repeat("\x16\x03\x01garbage", 64)))
		io.Copy(io.Discard, c)
	case 3, 7, 11, 15, 19: // the start of a ClientHello record, then nothing
		c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
	case 2, 4: // a handshake, then a bad bearer token on HTTPS or h2 on gRPC
		cfg := tlsCfg.Clone()
		if addr == grpcAddr {
			cfg.NextProtos = []string{"h2"}
		}
		tc := tls.Client(c, cfg)
		if tc.Handshake() != nil {
			count(-2)
			return
		}
		if addr == grpcAddr {
			return
		}
		fmt.Fprintf(tc, "POST /v1/sign HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer junk-%d\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}", i)
		resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
		if err != nil {
			count(-3)
			return
		}
		resp.Body.Close()
		count(resp.StatusCode)
	}
}
