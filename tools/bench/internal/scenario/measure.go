package scenario

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/kube"
	"github.com/meshca/meshca/tools/bench/internal/load"
	"github.com/meshca/meshca/tools/bench/internal/proc"
	"github.com/meshca/meshca/tools/bench/internal/report"
)

// sample is one measurement of one server.
type sample struct {
	res load.Result
	// cpu is the server's CPU time over the measurement.
	cpu time.Duration
	// apiCPU and api are the API server's CPU time and its requests by
	// resource over the measurement (token scenarios only).
	apiCPU time.Duration
	api    map[string]float64
	// rss is the server's peak resident memory during the measurement.
	rss int64
	// clientCPU is the load generator's own CPU time over the
	// measurement (its clients: TLS, gRPC, reading the answers).
	clientCPU time.Duration
	// idle is the fraction of the machine's CPU time left idle over the
	// measurement: what neither the server nor the clients nor anything
	// else used.
	idle float64
}

// meter reads a server's (and the API server's) counters at the start and
// end of a measurement.
type meter struct {
	server *proc.Proc
	kube   *kube.Env // nil without Kubernetes
	cpu0   time.Duration
	cli0   time.Duration
	mach0  proc.MachineTimes
	api0   time.Duration
	req0   map[string]float64
	s      sample
	err    error
}

func (m *meter) start() {
	_ = m.server.ResetPeakRSS()
	m.cpu0 = m.must(m.server.CPU())
	m.cli0 = m.must(proc.SelfCPU())
	m.mach0 = m.machine()
	if m.kube != nil {
		m.api0 = m.must(m.kube.APIServer.CPU())
		m.req0, m.err = m.kube.RequestCounts(context.Background())
	}
}

func (m *meter) stop() {
	m.s.cpu = m.must(m.server.CPU()) - m.cpu0
	m.s.clientCPU = m.must(proc.SelfCPU()) - m.cli0
	m.s.idle = m.machine().IdleSince(m.mach0)
	rss, err := m.server.PeakRSS()
	m.s.rss = rss
	if err != nil && m.err == nil {
		m.err = err
	}
	if m.kube != nil {
		m.s.apiCPU = m.must(m.kube.APIServer.CPU()) - m.api0
		req, err := m.kube.RequestCounts(context.Background())
		if err != nil && m.err == nil {
			m.err = err
		}
		m.s.api = map[string]float64{}
		for k, v := range req {
			m.s.api[k] = v - m.req0[k]
		}
	}
}

func (m *meter) machine() proc.MachineTimes {
	t, err := proc.Machine()
	if err != nil && m.err == nil {
		m.err = err
	}
	return t
}

func (m *meter) must(d time.Duration, err error) time.Duration {
	if err != nil && m.err == nil {
		m.err = err
	}
	return d
}

// closedRound measures t once in a closed loop.
func (e *Env) closedRound(ctx context.Context, t *target, k *kube.Env, req load.Request) (sample, error) {
	m := &meter{server: t.proc, kube: k}
	m.s.res = load.Closed(ctx, t.conns, req, e.Opts.Warmup, e.Opts.Duration, func(open bool) {
		if open {
			m.start()
		} else {
			m.stop()
		}
	})
	if m.err != nil {
		return sample{}, fmt.Errorf("%s: %w", t.name, m.err)
	}
	return m.s, nil
}

// series is every sample of one server in a scenario.
type series struct {
	name, cred string
	samples    []sample
}

func (s *series) ok() int {
	n := 0
	for _, x := range s.samples {
		n += x.res.OK
	}
	return n
}

func (s *series) rates() []float64 {
	r := make([]float64, len(s.samples))
	for i, x := range s.samples {
		r[i] = x.res.Rate()
	}
	return r
}

// cpuPerCSR is the median over rounds of server CPU per certificate.
func (s *series) cpuPerCSR() time.Duration {
	return s.perCSR(func(x sample) time.Duration { return x.cpu })
}

// clientCPUPerCSR is the median over rounds of the clients' CPU per
// certificate.
func (s *series) clientCPUPerCSR() time.Duration {
	return s.perCSR(func(x sample) time.Duration { return x.clientCPU })
}

// perCSR is the median over the rounds that completed certificates of
// what of a round over its certificates.
func (s *series) perCSR(what func(sample) time.Duration) time.Duration {
	var v []float64
	for _, x := range s.samples {
		if x.res.OK > 0 {
			v = append(v, float64(what(x))/float64(x.res.OK))
		}
	}
	return time.Duration(median(v))
}

// idle is the median over rounds of the machine's idle fraction.
func (s *series) idle() float64 {
	v := make([]float64, len(s.samples))
	for i, x := range s.samples {
		v[i] = x.idle
	}
	return median(v)
}

// apiCPUPerCSR is the API server's CPU per certificate over all rounds.
func (s *series) apiCPUPerCSR() time.Duration {
	var cpu time.Duration
	for _, x := range s.samples {
		cpu += x.apiCPU
	}
	return cpu / time.Duration(max(s.ok(), 1))
}

// apiPerCSR is the API server's requests for resource per certificate
// over all rounds ("*" sums every resource request).
func (s *series) apiPerCSR(resource string) float64 {
	var n float64
	for _, x := range s.samples {
		for k, v := range x.api {
			if k == resource || resource == "*" && k != "" {
				n += v
			}
		}
	}
	return n / float64(max(s.ok(), 1))
}

func (s *series) latencies() []time.Duration {
	var l []time.Duration
	for _, x := range s.samples {
		l = append(l, x.res.Latencies...)
	}
	return l
}

func (s *series) errors() map[string]int {
	m := map[string]int{}
	for _, x := range s.samples {
		for k, v := range x.res.Errors {
			m[k] += v
		}
	}
	return m
}

func (s *series) peakRSS() int64 {
	var p int64
	for _, x := range s.samples {
		p = max(p, x.rss)
	}
	return p
}

// ratio is the median over rounds of s's rate over the floor's rate in
// the same round.
func (s *series) ratio(floor *series) float64 {
	var r []float64
	for i, x := range s.samples {
		if i < len(floor.samples) && floor.samples[i].res.Rate() > 0 {
			r = append(r, x.res.Rate()/floor.samples[i].res.Rate())
		}
	}
	return median(r)
}

// versus compares s with a, measured in the same rounds: the medians over
// rounds of s's rate over a's and of s's CPU per certificate over a's.
func (s *series) versus(a *series) (rate, cpu float64) {
	var r, c []float64
	for i, x := range s.samples {
		if i >= len(a.samples) {
			break
		}
		y := a.samples[i]
		if y.res.Rate() > 0 {
			r = append(r, x.res.Rate()/y.res.Rate())
		}
		if x.res.OK > 0 && y.res.OK > 0 && y.cpu > 0 {
			c = append(c, (float64(x.cpu)/float64(x.res.OK))/(float64(y.cpu)/float64(y.res.OK)))
		}
	}
	return median(r), median(c)
}

// rateCell formats the median rate and, over several rounds, the range.
func rateCell(rates []float64) string {
	if len(rates) == 0 {
		return "—"
	}
	m := report.Int(int64(median(rates) + 0.5))
	if len(rates) == 1 {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, report.Int(int64(slices.Min(rates)+0.5)), report.Int(int64(slices.Max(rates)+0.5)))
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
