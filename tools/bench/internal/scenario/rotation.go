package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/load"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/report"
)

// Rotation is the rotation storm: Options.RotationWorkloads workloads due
// at the same moment, over Options.RotationConns connections, with
// Options.RotationDeadline to renew.
//
// A TLS connection presents one client certificate, so it is modelled as
// a node agent renewing for the workloads behind it with its own identity:
// connection i presents an SVID for spiffe://cluster.local/ns/bench/sa/node-i
// and sends workloads/conns CSRs for that identity, each with its own key,
// all at once. The server sees what it would see from that many agents
// renewing over that many connections: as many concurrent calls, each an
// mTLS renewal with a fresh key. Each server starts fresh, so its peak
// memory is the storm's.
func (e *Env) Rotation(ctx context.Context) (report.Table, error) {
	conns := e.Opts.RotationConns
	per := (e.Opts.RotationWorkloads + conns - 1) / conns
	idList, _ := ids("bench", "node", conns)
	e.logf("rotation: generating %d CSRs", per*conns)
	csrs, err := pki.CSRPool(idList, per)
	if err != nil {
		return report.Table{}, err
	}
	certs, err := e.clientCerts(idList)
	if err != nil {
		return report.Table{}, err
	}
	cfg := load.Storm{Deadline: e.Opts.RotationDeadline}
	var results []load.StormResult
	var cpu []time.Duration
	names := []string{"floor", "Istio's CA server", "`meshca server`"}
	for i, name := range names {
		var t *target
		svids := certs
		switch i {
		case 0:
			t, err = e.startPeer(name, "mTLS", "floor", "")
		case 1:
			t, err = e.startPeer(name, "mTLS", "istio", "")
		default:
			if t, err = e.startMeshca(name, "mTLS renewal", "off", "", true); err == nil {
				svids, err = t.meshca.SVIDs(ctx, idList)
			}
		}
		if err == nil {
			err = t.dial(ctx, conns, svids)
		}
		if err != nil {
			if t != nil {
				t.close()
			}
			return report.Table{}, fmt.Errorf("%s: %w", name, err)
		}
		r, c, err := e.storm(ctx, t, per, csrs, cfg)
		t.close()
		if err != nil {
			return report.Table{}, err
		}
		results, cpu = append(results, r), append(cpu, c)
	}
	return e.rotationTable(names, results, cpu, per*conns), nil
}

// storm runs one rotation storm against t and returns it with the
// server's CPU time; the peak memory is in the result's meter.
func (e *Env) storm(ctx context.Context, t *target, per int, csrs [][]pki.CSR, cfg load.Storm) (load.StormResult, time.Duration, error) {
	m := &meter{server: t.proc}
	m.start()
	r := load.Rotation(ctx, t.conns, per, func(i, k int) []byte { return csrs[i][k].PEM }, cfg)
	m.stop()
	if m.err != nil {
		return r, 0, fmt.Errorf("%s: %w", t.name, m.err)
	}
	r.PeakRSS = m.s.rss
	e.logf("rotation %-20s renewed %d, failed %s, shed %d, done in %s, peak RSS %s", t.name, r.Renewed,
		report.Codes(r.Failed), r.Shed, report.Seconds(r.Done), report.MiB(r.PeakRSS))
	e.logf("rotation %-20s per second: renewed %v, shed %v, asked back %v", t.name, r.Renewals, r.Sheds, r.AskedBack)
	e.logf("rotation %-20s admitted at the first attempt %d (p50 %s, p99 %s), after a shed %d (p99 %s)", t.name,
		len(r.FirstTry), report.Millis(load.Percentile(r.FirstTry, 50)), report.Millis(load.Percentile(r.FirstTry, 99)),
		len(r.AfterShed), report.Millis(load.Percentile(r.AfterShed, 99)))
	return r, m.s.cpu, nil
}

func (e *Env) rotationTable(names []string, rs []load.StormResult, cpu []time.Duration, total int) report.Table {
	t := report.Table{
		Title: fmt.Sprintf("Rotation storm: %s workloads due at once over %d mTLS connections, %s deadline",
			report.Int(int64(total)), e.Opts.RotationConns, e.Opts.RotationDeadline),
		Header: []string{"server", "credential", "renewed", "failed", "shed (with a retry hint)", "retry hints p50 / max", "all done in", "× floor",
			"peak RSS", "× floor", "p99 of admitted", "server CPU per renewal"},
		Notes: []string{"Shed answers (ResourceExhausted, Unavailable) are retried as meshca's agent retries: after the server's hint " +
			"(google.rpc.RetryInfo or the grpc-retry-pushback-ms trailer) plus up to half of it, at most 1 s, of jitter, at least 1 s; " +
			"without a hint after 1 s doubling, ±20 %. Any other error fails the workload; \"deadline\" counts workloads " +
			"still waiting to retry when the deadline passed. \"p99 of admitted\" is the latency of the attempts that got a certificate."},
	}
	creds := []string{"mTLS", "mTLS", "mTLS renewal"}
	for i, r := range rs {
		t.Rows = append(t.Rows, []string{names[i], creds[i], report.Int(int64(r.Renewed)), report.Codes(r.Failed),
			fmt.Sprintf("%s (%s)", report.Int(int64(r.Shed)), report.Int(int64(len(r.Hints)))), hintCell(r.Hints),
			report.Seconds(r.Done), report.Ratio(r.Done.Seconds() / max(rs[0].Done.Seconds(), 1e-9)),
			report.MiB(r.PeakRSS), report.Ratio(float64(r.PeakRSS) / float64(max(rs[0].PeakRSS, 1))),
			report.Millis(load.Percentile(r.Admitted(), 99)),
			report.Micros(cpu[i] / time.Duration(max(r.Renewed, 1)))})
	}
	return t
}

// hintCell is the median and largest retry hint, "—" for none.
func hintCell(h []time.Duration) string {
	if len(h) == 0 {
		return "—"
	}
	return report.Seconds(load.Percentile(h, 50)) + " / " + report.Seconds(load.Percentile(h, 100))
}
