package podcert_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshca/meshca/ca/podcert"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// countIssued is Metrics that closes done once want requests are issued.
type countIssued struct {
	issued atomic.Int64
	want   int64
	done   chan struct{}
}

func (c *countIssued) Request(result, _ string) {
	if (result == "issued" || result == "resent") && c.issued.Add(1) == c.want {
		close(c.done)
	}
}

func (c *countIssued) Issued(time.Duration) {}

// BenchmarkPodCertificates500 measures how long the signer takes to answer
// 500 PodCertificateRequests made at once: a node creates them (500 keys,
// for 10 pods on it) while no signer runs; the timer runs from the
// signer's start (its informer's first list included) until the 500th
// Issued status is written, every certificate recorded durably in a bbolt
// file first, every status checked by the real kube-apiserver. One
// iteration is one batch of 500 (run with -benchtime=1x or a few x).
//
// The signer's client is rate-limited as `meshca server` is: at its
// default --k8s-qps=50 (--k8s-burst=100), which bounds 500 status updates
// to about 8 s, and at --k8s-qps=1000, where the signer's own work shows.
func BenchmarkPodCertificates500(b *testing.B) {
	const requests, pods = 500, 10
	c := newCluster(b, "bench")
	var ps []pod
	for i := range pods {
		ps = append(ps, c.pod(b, "web-"+strconv.Itoa(i)))
	}
	for _, qps := range []float32{50, 1000} {
		b.Run(fmt.Sprintf("k8s-qps=%g", qps), func(b *testing.B) {
			cfg := rest.CopyConfig(c.env.Config)
			cfg.QPS, cfg.Burst = qps, int(2*qps)
			client, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				b.Fatal(err)
			}
			var total time.Duration
			for i := range b.N {
				b.StopTimer()
				signer := "meshca.test/bench-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36) + "-" + strconv.Itoa(i)
				createRequests(b, c, ps, signer, requests)
				st, err := boltstore.Open(filepath.Join(b.TempDir(), "meshca.db"), boltstore.Options{})
				if err != nil {
					b.Fatal(err)
				}
				m := &countIssued{want: requests, done: make(chan struct{})}
				ctl, err := podcert.New(podcert.Config{Client: client, SignerName: signer, Authority: newAuthority(b, st, nil),
					Identities: admission(b), Metrics: m})
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				stopped := make(chan struct{})
				b.StartTimer()
				start := time.Now()
				go func() { defer close(stopped); _ = ctl.Run(ctx) }()
				select {
				case <-m.done:
				case <-time.After(5 * time.Minute):
					b.Fatalf("%d of %d requests issued after 5 minutes", m.issued.Load(), requests)
				}
				took := time.Since(start)
				b.StopTimer()
				total += took
				cancel()
				<-stopped
				if n := numRecords(b, st); n != requests {
					b.Fatalf("%d certificates recorded for %d requests", n, requests)
				}
				_ = st.Close()
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/500-requests")
			b.ReportMetric(float64(requests*b.N)/total.Seconds(), "requests/s")
		})
	}
}

// createRequests creates n requests to signer as the node, spread over
// pods, 16 at a time.
func createRequests(b *testing.B, c *cluster, pods []pod, signer string, n int) {
	b.Helper()
	var wg sync.WaitGroup
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				c.request(b, pods[i%len(pods)], signer, key(b, keyP256, true), nil)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
