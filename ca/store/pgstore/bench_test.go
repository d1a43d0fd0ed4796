package pgstore_test

import (
	"context"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/boltstore"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/storetest"
)

// countCommits counts group commits (boltstore.Metrics and
// pgstore.Metrics).
type countCommits struct{ commits atomic.Int64 }

func (c *countCommits) Committed(int, time.Duration)    { c.commits.Add(1) }
func (c *countCommits) Checkpointed(int, time.Duration) {}

// BenchmarkRecordIssuanceParallel measures the durable record under load,
// the two stores side by side in one process: 64 callers (32 per CPU)
// recording new serials, bbolt's journal with its fdatasync against
// PostgreSQL 15 with its default durability (fsync, synchronous commit) on
// the same machine and disk, over TCP on 127.0.0.1. cpu-ns/op is this
// process's CPU per record, server-cpu-ns/op PostgreSQL's (its processes;
// none for bbolt), commits/op the group commits per record.
func BenchmarkRecordIssuanceParallel(b *testing.B) {
	run := func(b *testing.B, s store.Store, c *countCommits, serverCPU func() time.Duration) {
		var n atomic.Uint64
		ctx := context.Background()
		b.SetParallelism(32)
		before, cpu0, srv0 := c.commits.Load(), cpuTime(b), serverCPU()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				i := n.Add(1)
				rec := storetest.Issuance(fmt.Sprintf("%032x", i), "spiffe://example.org/workload", int(i%1000), 1000+int(i%1000))
				if err := s.RecordIssuance(ctx, rec); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(cpuTime(b)-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(serverCPU()-srv0)/float64(b.N), "server-cpu-ns/op")
		b.ReportMetric(float64(c.commits.Load()-before)/float64(b.N), "commits/op")
	}
	b.Run("store=bolt", func(b *testing.B) {
		var c countCommits
		// No checkpoint while measured: the request path alone, as
		// boltstore's own BenchmarkRecordIssuance.
		s, err := boltstore.Open(filepath.Join(b.TempDir(), "meshca.db"), boltstore.Options{Metrics: &c, CheckpointRecords: 1 << 30, CheckpointInterval: time.Hour})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		run(b, s, &c, func() time.Duration { return 0 })
	})
	b.Run("store=postgres", func(b *testing.B) {
		var c countCommits
		srv := pgenv.Start(b, pgenv.Durable())
		s := open(b, srv.NewDatabase(b), pgstore.Options{Metrics: &c})
		run(b, s, &c, func() time.Duration {
			d, err := srv.CPUTime()
			if err != nil {
				b.Fatal(err)
			}
			return d
		})
	})
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
