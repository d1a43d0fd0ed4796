package scenario

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/load"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/report"
)

// Rotation is the rotation storm: Options.RotationWorkloads workloads due
// at the same moment, over Options.RotationConns connections, with
// Options.RotationDeadline to renew; Options.RotationRounds times for each
// server, interleaved (floor, Istio's, meshca, meshca B, floor, ...) so
// that the machine's noise hits every server alike.
//
// A TLS connection presents one client certificate, so it is modelled as
// a node agent renewing for the workloads behind it with its own identity:
// connection i presents an SVID for spiffe://cluster.local/ns/bench/sa/node-i
// and sends workloads/conns CSRs for that identity, each with its own key,
// all at once. The server sees what it would see from that many agents
// renewing over that many connections: as many concurrent calls, each an
// mTLS renewal with a fresh key. Each storm starts its server fresh, so
// its peak memory is the storm's. With Options.MeshcaB, a second meshca
// build is measured the same way, in the same rounds.
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
	type server struct {
		name, kind, bin string // kind: floor, istio, or "" for meshca bin
	}
	servers := []server{{"floor", "floor", ""}, {"Istio's CA server", "istio", ""}}
	for _, b := range e.builds("`meshca server`") {
		servers = append(servers, server{b.name, "", b.bin})
	}
	rounds := max(e.Opts.RotationRounds, 1)
	all := make([]stormSeries, len(servers))
	for r := range rounds {
		for i, sv := range servers {
			var t *target
			svids := certs
			if sv.kind != "" {
				t, err = e.startPeer(sv.name, "mTLS", sv.kind, "")
			} else if t, err = e.startMeshcaBin(sv.bin, sv.name, "mTLS renewal", "off", "", true); err == nil {
				svids, err = t.meshca.SVIDs(ctx, idList)
			}
			if err == nil {
				err = t.dial(ctx, conns, svids)
			}
			if err != nil {
				if t != nil {
					t.close()
				}
				return report.Table{}, fmt.Errorf("%s: %w", sv.name, err)
			}
			run, err := e.storm(ctx, t, per, csrs, cfg)
			t.close()
			if err != nil {
				return report.Table{}, err
			}
			res := run.res
			all[i].name, all[i].cred = sv.name, t.cred
			all[i].runs = append(all[i].runs, run)
			e.logf("rotation round %d/%d %-20s done in %s, %s the floor's", r+1, rounds, sv.name,
				report.Seconds(res.Done), report.Ratio(res.Done.Seconds()/max(all[0].runs[r].res.Done.Seconds(), 1e-9)))
		}
	}
	if e.Opts.MeshcaB != "" {
		a, b := all[len(all)-2], all[len(all)-1]
		e.logf("rotation %s over %s, medians over %d rounds of the ratio in each: all done in %.3f×, server CPU per renewal %.3f×, p99 of admitted %.3f× (from the sending %.3f×)",
			b.name, a.name, rounds, b.versus(a, stormRun.done), b.versus(a, stormRun.cpuPerRenewal), b.versus(a, stormRun.p99), b.versus(a, stormRun.p99Sent))
	}
	return e.rotationTable(all, per*conns), nil
}

// stormRun is one rotation storm against one server, with the server's
// CPU time and the load generator's.
type stormRun struct {
	res      load.StormResult
	cpu, gen time.Duration
}

func (r stormRun) done() float64 { return r.res.Done.Seconds() }

func (r stormRun) cpuPerRenewal() float64 { return r.cpu.Seconds() / float64(max(r.res.Renewed, 1)) }

func (r stormRun) p99() float64 { return load.Percentile(r.res.Admitted(), 99).Seconds() }

func (r stormRun) p99Sent() float64 { return load.Percentile(r.res.Sent, 99).Seconds() }

func (r stormRun) rss() float64 { return float64(r.res.PeakRSS) }

// busy is how many processors the server and the load generator kept busy
// on average, together: below the machine's count, the storm left CPU
// idle (waiting for retries, or for the disk).
func (r stormRun) busy() float64 { return (r.cpu + r.gen).Seconds() / max(r.res.Done.Seconds(), 1e-9) }

// stormSeries is one server's rotation storms, a round each.
type stormSeries struct {
	name, cred string
	runs       []stormRun
}

// each is f of every run.
func (s stormSeries) each(f func(stormRun) float64) []float64 {
	v := make([]float64, len(s.runs))
	for i, r := range s.runs {
		v[i] = f(r)
	}
	return v
}

// versus is the median over rounds of f of s's run over f of o's run in
// the same round.
func (s stormSeries) versus(o stormSeries, f func(stormRun) float64) float64 {
	var v []float64
	for i := range min(len(s.runs), len(o.runs)) {
		v = append(v, f(s.runs[i])/max(f(o.runs[i]), 1e-12))
	}
	return median(v)
}

// medianCell is the median of v, and when the values differ their range,
// each formatted by format.
func medianCell(v []float64, format func(float64) string) string {
	lo, hi := slices.Min(v), slices.Max(v)
	if lo == hi {
		return format(lo)
	}
	return fmt.Sprintf("%s (%s–%s)", format(median(v)), format(lo), format(hi))
}

// storm runs one rotation storm against t and returns it with the
// server's CPU time and the load generator's (this process's); the peak
// memory is in the result.
func (e *Env) storm(ctx context.Context, t *target, per int, csrs [][]pki.CSR, cfg load.Storm) (stormRun, error) {
	m := &meter{server: t.proc}
	m.start()
	r := load.Rotation(ctx, t.conns, per, func(i, k int) []byte { return csrs[i][k].PEM }, cfg)
	m.stop()
	gen := m.s.clientCPU
	if m.err != nil {
		return stormRun{}, fmt.Errorf("%s: %w", t.name, m.err)
	}
	r.PeakRSS = m.s.rss
	run := stormRun{res: r, cpu: m.s.cpu, gen: gen}
	e.logf("rotation %-20s renewed %d, failed %s, shed %d, done in %s, peak RSS %s", t.name, r.Renewed,
		report.Codes(r.Failed), r.Shed, report.Seconds(r.Done), report.MiB(r.PeakRSS))
	e.logf("rotation %-20s CPU: server %s, load generator %s (%s a call), both %.2f of %d processors busy; machine %.0f %% idle", t.name,
		report.Seconds(m.s.cpu), report.Seconds(gen), report.Micros(gen/time.Duration(max(r.Renewed+r.Shed, 1))),
		run.busy(), runtime.NumCPU(), 100*m.s.idle)
	e.logf("rotation %-20s per second: renewed %v, shed %v, asked back %v", t.name, r.Renewals, r.Sheds, r.AskedBack)
	e.logf("rotation %-20s admitted at the first attempt %d (p50 %s, p99 %s), after a shed %d (p99 %s)", t.name,
		len(r.FirstTry), report.Millis(load.Percentile(r.FirstTry, 50)), report.Millis(load.Percentile(r.FirstTry, 99)),
		len(r.AfterShed), report.Millis(load.Percentile(r.AfterShed, 99)))
	e.logf("rotation %-20s admitted, from the request's sending: p50 %s, p99 %s; a workload's whole renewal, from its first attempt: p50 %s, p99 %s", t.name,
		report.Millis(load.Percentile(r.Sent, 50)), report.Millis(load.Percentile(r.Sent, 99)),
		report.Millis(load.Percentile(r.Whole, 50)), report.Millis(load.Percentile(r.Whole, 99)))
	return run, nil
}

// rotationTable has a row per server: with more than one round, the
// median of each figure and its range; "× floor" is the median over rounds
// of the ratio to the floor's storm of the same round.
func (e *Env) rotationTable(all []stormSeries, total int) report.Table {
	rounds := ""
	if n := len(all[0].runs); n > 1 {
		rounds = fmt.Sprintf(", %d rounds per server (medians and ranges)", n)
	}
	t := report.Table{
		Title: fmt.Sprintf("Rotation storm: %s workloads due at once over %d mTLS connections, %s deadline%s",
			report.Int(int64(total)), e.Opts.RotationConns, e.Opts.RotationDeadline, rounds),
		Header: []string{"server", "credential", "renewed", "failed", "shed (with a retry hint)", "retry hints p50 / max", "all done in", "× floor",
			"peak RSS", "× floor", "p99 of admitted", "from the sending", "server CPU per renewal", "processors busy"},
		Notes: []string{"Shed answers (ResourceExhausted, Unavailable) are retried as meshca's agent retries: after the server's hint " +
			"(google.rpc.RetryInfo or the grpc-retry-pushback-ms trailer) plus up to half of it, at most 1 s, of jitter, at least 1 s; " +
			"without a hint after 1 s doubling, ±20 %. Any other error fails the workload; \"deadline\" counts workloads " +
			"still waiting to retry when the deadline passed. \"p99 of admitted\" is the latency of the attempts that got a certificate, " +
			"from the attempt's start at the client; \"from the sending\" the same from when the request left the client, past any wait in the client " +
			"for a stream on its connection (a server's limit on the calls open at once on one connection, HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). \"processors busy\" is the server's CPU time and the load generator's over the storm's time: " +
			fmt.Sprintf("the two share this machine's %d processors, and fewer busy means the storm left CPU idle.", runtime.NumCPU())},
	}
	seconds := func(v float64) string { return report.Seconds(time.Duration(v * float64(time.Second))) }
	millis := func(v float64) string { return report.Millis(time.Duration(v * float64(time.Second))) }
	micros := func(v float64) string { return report.Micros(time.Duration(v * float64(time.Second))) }
	count := func(v float64) string { return report.Int(int64(v)) }
	for _, s := range all {
		failed := map[string]int{}
		var hints []time.Duration
		var renewed, shed, withHint []float64
		for _, r := range s.runs {
			for code, n := range r.res.Failed {
				failed[code] += n
			}
			hints = append(hints, r.res.Hints...)
			renewed = append(renewed, float64(r.res.Renewed))
			shed = append(shed, float64(r.res.Shed))
			withHint = append(withHint, float64(len(r.res.Hints)))
		}
		// The median shed and the median with a hint, then the range.
		shedCell := fmt.Sprintf("%s (%s)", count(median(shed)), count(median(withHint)))
		if lo, hi := slices.Min(shed), slices.Max(shed); lo != hi {
			shedCell += fmt.Sprintf(", %s–%s", count(lo), count(hi))
		}
		t.Rows = append(t.Rows, []string{s.name, s.cred, medianCell(renewed, count), report.Codes(failed), shedCell, hintCell(hints),
			medianCell(s.each(stormRun.done), seconds), report.Ratio(s.versus(all[0], stormRun.done)),
			medianCell(s.each(stormRun.rss), func(v float64) string { return report.MiB(int64(v)) }), report.Ratio(s.versus(all[0], stormRun.rss)),
			medianCell(s.each(stormRun.p99), millis), medianCell(s.each(stormRun.p99Sent), millis), medianCell(s.each(stormRun.cpuPerRenewal), micros),
			medianCell(s.each(stormRun.busy), func(v float64) string { return fmt.Sprintf("%.2f", v) })})
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
