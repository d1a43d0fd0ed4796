package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/kube"
	"github.com/meshca/meshca/tools/bench/internal/load"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/report"
)

// csrsPerClient is how many different CSRs each client cycles through.
const csrsPerClient = 8

// MTLS measures renewal over mTLS: each client presents an SVID for its
// own identity and asks for a new one for the same identity. The floor and
// Istio's CA server get SVIDs under the benchmark's CA; meshca
// (--k8s-attestation off) gets them from meshca itself, first issued with
// join tokens, as a machine outside Kubernetes would. With Options.MeshcaB,
// a second meshca build is measured the same way, in the same rounds.
func (e *Env) MTLS(ctx context.Context) (report.Table, error) {
	n := e.Opts.Clients
	idList, _ := ids("bench", "client", n)
	csrs, err := pki.CSRPool(idList, csrsPerClient)
	if err != nil {
		return report.Table{}, err
	}
	certs, err := e.clientCerts(idList)
	if err != nil {
		return report.Table{}, err
	}
	var targets []*target
	defer func() { closeAll(targets) }()
	for _, p := range []struct{ name, kind string }{{"floor", "floor"}, {"Istio's CA server", "istio"}} {
		t, err := e.startPeer(p.name, "mTLS", p.kind, "")
		if err != nil {
			return report.Table{}, err
		}
		targets = append(targets, t)
		if err := t.dial(ctx, n, certs); err != nil {
			return report.Table{}, fmt.Errorf("%s: %w", t.name, err)
		}
	}
	for _, b := range e.builds("`meshca server`") {
		m, err := e.startMeshcaBin(b.bin, b.name, "mTLS renewal", "off", "", true)
		if err != nil {
			return report.Table{}, err
		}
		targets = append(targets, m)
		svids, err := m.meshca.SVIDs(ctx, idList)
		if err != nil {
			return report.Table{}, err
		}
		if err := m.dial(ctx, n, svids); err != nil {
			return report.Table{}, fmt.Errorf("%s: %w", b.name, err)
		}
	}
	req := func(i, k int) ([]byte, string) { return csrs[i][k%csrsPerClient].PEM, "" }
	all, err := e.rounds(ctx, "mtls", targets, nil, func(*target) load.Request { return req })
	if err != nil {
		return report.Table{}, err
	}
	if e.Opts.MeshcaB != "" {
		e.logVersus("mtls", all[len(all)-2], all[len(all)-1])
	}
	return e.closedTable("mTLS renewal", all, false), nil
}

// build is one meshca binary under test and the name its rows carry.
type build struct{ bin, name string }

// builds lists the meshca binaries to measure as name: -meshca, then
// -meshca-b if set. The same binary twice is an A/A run: names, not paths,
// tell them apart.
func (e *Env) builds(name string) []build {
	bs := []build{{e.Meshca, name}}
	if e.Opts.MeshcaB != "" {
		bs = append(bs, build{e.Opts.MeshcaB, name + " (B)"})
	}
	return bs
}

// logVersus logs b's CSR/s and CPU per CSR over a's, two builds measured in
// the same rounds.
func (e *Env) logVersus(scenario string, a, b *series) {
	rate, cpu := b.versus(a)
	e.logf("%s %s over %s, medians over %d rounds of the ratio in each: CSR/s %.3f×, server CPU per CSR %.3f×",
		scenario, b.name, a.name, len(b.samples), rate, cpu)
}

// rounds measures each target in turn, Rounds times, with the requests
// reqFor gives it. The first target is the floor.
func (e *Env) rounds(ctx context.Context, scenario string, targets []*target, k *kube.Env, reqFor func(*target) load.Request) ([]*series, error) {
	all := make([]*series, len(targets))
	for i, t := range targets {
		all[i] = &series{name: t.name, cred: t.cred}
	}
	for r := range e.Opts.Rounds {
		for i, t := range targets {
			s, err := e.closedRound(ctx, t, k, reqFor(t))
			if err != nil {
				return nil, err
			}
			all[i].samples = append(all[i].samples, s)
			ok := time.Duration(max(1, s.res.OK))
			e.logf("%s round %d/%d %-44s %7.0f CSR/s, %s CPU per CSR (clients %s), machine %.0f%% idle, p99 %s, errors %s",
				scenario, r+1, e.Opts.Rounds, t.name+" ("+t.cred+")", s.res.Rate(),
				report.Micros(s.cpu/ok), report.Micros(s.clientCPU/ok), 100*s.idle,
				report.Millis(load.Percentile(s.res.Latencies, 99)), report.Codes(s.res.Errors))
		}
	}
	return all, nil
}

// closedTable formats closed-loop series; the first is the floor. With
// kube, the API server's columns are added.
func (e *Env) closedTable(title string, all []*series, withKube bool) report.Table {
	t := report.Table{
		Title: fmt.Sprintf("%s: %d clients, %d × %s per server (after %s warm-up)", title, e.Opts.Clients, e.Opts.Rounds, e.Opts.Duration, e.Opts.Warmup),
		Header: []string{"server", "credential", "CSR/s median (range)", "× floor", "server CPU per CSR", "× floor",
			"p50", "p99", "errors", "peak RSS", "clients' CPU per CSR", "machine idle"},
	}
	if withKube {
		t.Header = append(t.Header, "TokenReviews per CSR", "API requests per CSR", "apiserver CPU per CSR")
	}
	for _, s := range all {
		lat := s.latencies()
		row := []string{s.name, s.cred, rateCell(s.rates()), report.Ratio(s.ratio(all[0])), report.Micros(s.cpuPerCSR()),
			report.Ratio(float64(s.cpuPerCSR()) / float64(max(all[0].cpuPerCSR(), 1))),
			report.Millis(load.Percentile(lat, 50)), report.Millis(load.Percentile(lat, 99)),
			report.Codes(s.errors()), report.MiB(s.peakRSS()), report.Micros(s.clientCPUPerCSR()),
			fmt.Sprintf("%.0f %%", 100*s.idle())}
		if withKube {
			row = append(row, fmt.Sprintf("%.3f", s.apiPerCSR("tokenreviews")), fmt.Sprintf("%.3f", s.apiPerCSR("*")),
				report.Micros(s.apiCPUPerCSR()))
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}
