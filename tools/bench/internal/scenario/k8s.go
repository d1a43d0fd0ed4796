package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/kube"
	"github.com/meshca/meshca/tools/bench/internal/load"
	"github.com/meshca/meshca/tools/bench/internal/meshca"
	"github.com/meshca/meshca/tools/bench/internal/pki"
	"github.com/meshca/meshca/tools/bench/internal/report"
)

// tokenNamespace holds the ServiceAccounts of the token scenarios.
const tokenNamespace = "bench"

// K8s measures Kubernetes ServiceAccount tokens in steady state: each
// client presents its own token (TokenRequest API, audiences meshca and
// istio-ca) on every CSR, against the floor with an offline JWKS check,
// Istio's CA server (one TokenReview per CSR at istiod's client-go limits)
// and meshca in each of Options.K8sModes.
func (e *Env) K8s(ctx context.Context) (report.Table, error) {
	b, err := e.tokenSetup(ctx)
	if err != nil {
		return report.Table{}, err
	}
	defer closeAll(b.targets)
	toks, err := b.k.Tokens(ctx, tokenNamespace, b.names, 1)
	if err != nil {
		return report.Table{}, err
	}
	req := func(i, n int) ([]byte, string) { return b.csrs[i][n%csrsPerClient].PEM, toks[i][0] }
	all, err := e.rounds(ctx, "k8s", b.targets, b.k, func(*target) load.Request { return req })
	if err != nil {
		return report.Table{}, err
	}
	for _, p := range b.pairs {
		e.logVersus("k8s", all[p[0]], all[p[1]])
	}
	t := e.closedTable("Kubernetes ServiceAccount tokens (one token per client, reused)", all, true)
	t.Notes = b.skipped
	return t, nil
}

// tokenBench is what both token scenarios use: the API server, the
// clients' ServiceAccounts and CSRs, and the servers under test (the
// offline-JWT floor first) with the clients connected.
type tokenBench struct {
	k       *kube.Env
	csrs    [][]pki.CSR
	names   []string
	targets []*target
	// skipped says which meshca modes were left out, and why.
	skipped []string
	// pairs index targets: each mode's -meshca build, then its -meshca-b
	// build, when there is one.
	pairs [][2]int
}

// tokenSetup prepares a tokenBench. Modes the meshca binary does not offer
// are skipped. On error nothing is left running but the API server.
func (e *Env) tokenSetup(ctx context.Context) (_ *tokenBench, err error) {
	b := &tokenBench{}
	if b.k, err = e.Kube(); err != nil {
		return nil, err
	}
	idList, names := ids(tokenNamespace, "client", e.Opts.Clients)
	if err := b.k.CreateServiceAccounts(ctx, tokenNamespace, names); err != nil {
		return nil, err
	}
	b.names = names
	if b.csrs, err = pki.CSRPool(idList, csrsPerClient); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			closeAll(b.targets)
		}
	}()
	for _, p := range []struct{ name, cred, kind string }{
		{"floor + offline JWT", "K8s token, JWKS", "floor"},
		{"Istio's CA server, istiod's limits (80 QPS)", "K8s token, TokenReview", "istio"},
	} {
		t, err := e.startPeer(p.name, p.cred, p.kind, b.k.Kubeconfig)
		if err != nil {
			return nil, err
		}
		b.targets = append(b.targets, t)
	}
	for _, mode := range e.Opts.K8sModes {
		started := 0
		for _, bd := range e.builds("`meshca server --k8s-attestation " + mode + "`") {
			if ok, why := meshca.SupportsMode(bd.bin, mode); !ok {
				b.skipped = append(b.skipped, fmt.Sprintf("%s skipped: %s", bd.name, why))
				e.logf("skipping %s: %s", bd.name, why)
				continue
			}
			t, err := e.startMeshcaBin(bd.bin, bd.name, "K8s token", mode, b.k.Kubeconfig, false)
			if err != nil {
				return nil, err
			}
			b.targets = append(b.targets, t)
			if started++; started == 2 {
				b.pairs = append(b.pairs, [2]int{len(b.targets) - 2, len(b.targets) - 1})
			}
		}
	}
	for _, t := range b.targets {
		if err := t.dial(ctx, e.Opts.Clients, nil); err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
	}
	return b, nil
}

// Storm measures a storm of new pods: every CSR carries a token never seen
// before (minted just before, outside the measurement), the clients all at
// once, Options.StormCSRs per server and round, after one unmeasured CSR
// per client.
func (e *Env) Storm(ctx context.Context) (report.Table, error) {
	b, err := e.tokenSetup(ctx)
	if err != nil {
		return report.Table{}, err
	}
	defer closeAll(b.targets)
	k, targets := b.k, b.targets
	n := e.Opts.Clients
	perClient := (e.Opts.StormCSRs + n - 1) / n
	all := make([]*series, len(targets))
	for i, t := range targets {
		all[i] = &series{name: t.name, cred: t.cred}
	}
	// Warm up, unmeasured: one CSR per client, with tokens of its own, so
	// that what a new process does once (fetching the JWKS, growing its
	// pools) is not counted as the storm's.
	warm, err := k.Tokens(ctx, tokenNamespace, b.names, 1)
	if err != nil {
		return report.Table{}, err
	}
	for _, t := range targets {
		res := load.Count(ctx, t.conns, func(i, _ int) ([]byte, string) { return b.csrs[i][0].PEM, warm[i][0] }, n)
		if res.OK != n {
			return report.Table{}, fmt.Errorf("%s: warm-up: %s", t.name, report.Codes(res.Errors))
		}
	}
	for r := range e.Opts.StormRounds {
		for i, t := range targets {
			toks, err := k.Tokens(ctx, tokenNamespace, b.names, perClient)
			if err != nil {
				return report.Table{}, err
			}
			time.Sleep(time.Second) // let the API server finish with the token requests
			req := func(i, n int) ([]byte, string) { return b.csrs[i][n%csrsPerClient].PEM, toks[i][n] }
			m := &meter{server: t.proc, kube: k}
			m.start()
			m.s.res = load.Count(ctx, t.conns, req, perClient*n)
			m.stop()
			if m.err != nil {
				return report.Table{}, fmt.Errorf("%s: %w", t.name, m.err)
			}
			all[i].samples = append(all[i].samples, m.s)
			e.logf("storm round %d/%d %-44s p50 %s p99 %s, %s apiserver CPU per CSR, errors %s", r+1, e.Opts.StormRounds, t.name,
				report.Millis(load.Percentile(m.s.res.Latencies, 50)), report.Millis(load.Percentile(m.s.res.Latencies, 99)),
				report.Micros(m.s.apiCPU/time.Duration(max(1, m.s.res.OK))), report.Codes(m.s.res.Errors))
		}
	}
	floorP99 := load.Percentile(all[0].latencies(), 99)
	t := report.Table{
		Title: fmt.Sprintf("Fresh-token storm: %d CSRs per server and round, each with a token never seen, %d at once, %d rounds",
			perClient*n, n, e.Opts.StormRounds),
		Header: []string{"server", "credential", "CSR/s median (range)", "p50", "p99", "p99 × floor", "server CPU per CSR",
			"TokenReviews per CSR", "apiserver CPU per CSR", "errors"},
		Notes: b.skipped,
	}
	for _, s := range all {
		lat := s.latencies()
		p99 := load.Percentile(lat, 99)
		t.Rows = append(t.Rows, []string{s.name, s.cred, rateCell(s.rates()), report.Millis(load.Percentile(lat, 50)),
			report.Millis(p99), report.Ratio(float64(p99) / float64(max(floorP99, 1))), report.Micros(s.cpuPerCSR()),
			fmt.Sprintf("%.3f", s.apiPerCSR("tokenreviews")), report.Micros(s.apiCPUPerCSR()), report.Codes(s.errors())})
	}
	return t, nil
}
