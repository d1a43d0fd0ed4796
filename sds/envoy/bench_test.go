package envoy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/sds"
)

// The benchmark's clients run in a child process (this test binary, running
// TestBenchClients), so that the memory measured is the server's alone.
const (
	benchSocketEnv  = "MESHCA_SDS_BENCH_SOCKET"
	benchStreamsEnv = "MESHCA_SDS_BENCH_STREAMS"
	benchPrefix     = "sdsbench: "
	streamsPerConn  = 100
)

// BenchmarkStreams opens 1k and 10k SDS streams for "default" (100 per
// client connection, over a Unix socket) and reports:
//   - bytes/stream: the server's HeapInuse growth per open, ACKed stream;
//   - stack-bytes/stream and goroutines/stream: the same for stacks;
//   - push-ms: the time from publishing a rotated SVID to every stream
//     having received it.
func BenchmarkStreams(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) { benchStreams(b, n) })
	}
}

func benchStreams(b *testing.B, n int) {
	h := newHarness(b)
	svids := make([]*sds.SVID, b.N) // issued beforehand: the timer covers the push only
	for i := range svids {
		svids[i] = h.ca.Issue(b, uint64(i+2))
	}

	before := memStats()
	goroutines := runtime.NumGoroutine()

	cmd := exec.CommandContext(b.Context(), os.Args[0], "-test.run=^TestBenchClients$", "-test.timeout=0")
	cmd.Env = append(os.Environ(), benchSocketEnv+"="+h.path, benchStreamsEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		stdin.Close() // the child exits when its stdin closes
		cmd.Wait()
	}()
	events := make(chan string)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if ev, ok := strings.CutPrefix(sc.Text(), benchPrefix); ok {
				events <- ev
			}
		}
	}()
	expect := func(want string) {
		b.Helper()
		select {
		case ev, ok := <-events:
			if !ok || ev != want {
				b.Fatalf("client process said %q (open %v), want %q", ev, ok, want)
			}
		case <-time.After(5 * time.Minute):
			b.Fatalf("client process did not say %q", want)
		}
	}

	expect("ready")
	// Every stream has been answered and its ACK turned into a watch.
	deadline := time.Now().Add(time.Minute)
	for h.srv.cache.NumCacheWatches() != n {
		if time.Now().After(deadline) {
			b.Fatalf("%d watches, want %d", h.srv.cache.NumCacheWatches(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := memStats()
	perStream := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	heap := perStream(after.HeapInuse, before.HeapInuse)
	stack := perStream(after.StackInuse, before.StackInuse)
	goroutinesPerStream := float64(runtime.NumGoroutine()-goroutines) / float64(n)

	b.ResetTimer()
	var pushed time.Duration
	for i := range b.N {
		start := time.Now()
		h.src.Set(svids[i])
		expect("pushed")
		pushed += time.Since(start)
	}
	b.StopTimer()
	b.ReportMetric(heap, "bytes/stream")
	b.ReportMetric(stack, "stack-bytes/stream")
	b.ReportMetric(goroutinesPerStream, "goroutines/stream")
	b.ReportMetric(float64(pushed.Microseconds())/1000/float64(b.N), "push-ms")
}

func memStats() runtime.MemStats {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

// TestBenchClients is BenchmarkStreams' client process; it does nothing in
// a normal test run. It opens the streams, says "ready" when each has its
// first response and has ACKed it, then "pushed" each time every stream has
// received one more response, until its stdin closes.
func TestBenchClients(t *testing.T) {
	path := os.Getenv(benchSocketEnv)
	if path == "" {
		t.Skip("the client process of BenchmarkStreams")
	}
	n, err := strconv.Atoi(os.Getenv(benchStreamsEnv))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()

	var clients []secretservice.SecretDiscoveryServiceClient
	for range (n + streamsPerConn - 1) / streamsPerConn {
		cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, secretservice.NewSecretDiscoveryServiceClient(cc))
	}

	var ready sync.WaitGroup
	var received atomic.Int64
	pushes := make(chan struct{}, n)
	ready.Add(n)
	for i := range n {
		go func() {
			st, err := clients[i/streamsPerConn].StreamSecrets(context.Background())
			if err != nil {
				fmt.Fprintln(os.Stderr, "stream:", err)
				os.Exit(1)
			}
			names := []string{DefaultName}
			req := &discovery.DiscoveryRequest{Node: testNode, TypeUrl: resource.SecretType, ResourceNames: names}
			if err := st.Send(req); err != nil {
				fmt.Fprintln(os.Stderr, "send:", err)
				os.Exit(1)
			}
			for first := true; ; first = false {
				resp, err := st.Recv()
				if err != nil {
					fmt.Fprintln(os.Stderr, "recv:", err)
					os.Exit(1)
				}
				if !first {
					pushes <- struct{}{}
				}
				ack := &discovery.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: names,
					VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
				if err := st.Send(ack); err != nil {
					fmt.Fprintln(os.Stderr, "ack:", err)
					os.Exit(1)
				}
				if first {
					ready.Done()
				}
			}
		}()
	}
	ready.Wait()
	fmt.Println(benchPrefix + "ready")
	for range pushes {
		if received.Add(1)%int64(n) == 0 {
			fmt.Println(benchPrefix + "pushed")
		}
	}
}
