package plane

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/ca/leader"
	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/internal/metrics"
)

// LeaderElection configures the election of one leader among replicas
// that share a store (ca/leader). The leader alone takes the root
// rotation's scheduled steps, prunes, writes the trust bundle's
// ConfigMaps and ClusterTrustBundle and answers PodCertificateRequests;
// every replica serves CSRs and the SPIFFE bundle endpoint.
type LeaderElection struct {
	// Enabled turns the election on. Off (the default), this replica
	// leads alone.
	Enabled bool
	// Namespace, Name and Identity of the Lease and of this replica in
	// it, and its LeaseDuration, RenewDeadline and RetryPeriod: as in
	// leader.Config (defaults there). The Lease is reached with the
	// Kubernetes client of Config.Kubernetes (its kubeconfig, else the
	// in-cluster configuration).
	Namespace, Name, Identity                 string
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
}

// elector is the leader elector of Config.LeaderElection, nil when it is
// off.
func (c *Config) elector(reg prometheus.Registerer) (*leader.Elector, error) {
	l := c.LeaderElection
	if !l.Enabled {
		return nil, nil
	}
	k := c.Kubernetes
	client, err := kubeclient.Config{Kubeconfig: k.Kubeconfig, QPS: k.QPS, Burst: k.Burst, UserAgent: c.UserAgent}.Clientset()
	if err != nil {
		return nil, fmt.Errorf("leader election: %w", err)
	}
	return leader.New(leader.Config{Client: client.CoordinationV1(), Namespace: l.Namespace, Name: l.Name, Identity: l.Identity,
		LeaseDuration: l.LeaseDuration, RenewDeadline: l.RenewDeadline, RetryPeriod: l.RetryPeriod,
		Logger: c.Logger, Metrics: metrics.NewLeader(reg)})
}

// leaderFunc is e's Leading for ca.Config.Leader, nil without an elector
// (a replica alone).
func leaderFunc(e *leader.Elector) func() (uint64, bool) {
	if e == nil {
		return nil
	}
	return e.Leading
}

// runLeaderJobs runs jobs from now until ctx ends: with an elector only
// while this replica leads (each term afresh), else all along; each job's
// error is logged as what.
func (p *Plane) runLeaderJobs(ctx context.Context, e *leader.Elector, jobs map[string]func(context.Context) error) {
	for what, job := range jobs {
		run := func(ctx context.Context) {
			if err := job(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Error("background job stopped", "job", what, "err", err)
			}
		}
		if e == nil {
			p.running.Go(func() { run(ctx) })
			continue
		}
		e.Go(run)
	}
	if e != nil {
		p.running.Go(func() { _ = e.Run(ctx) }) // ends with ctx, after the jobs, releasing the Lease
	}
}
