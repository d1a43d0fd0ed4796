// Package leader elects one leader among meshca replicas on a Kubernetes
// Lease (coordination.k8s.io/v1), through client-go's leaderelection, and
// runs jobs only on the leader: the root rotation's scheduled steps and
// pruning (ca.Config.Leader), the trust bundle's ConfigMaps and
// ClusterTrustBundle.
//
//	e, err := leader.New(leader.Config{Client: clientset.CoordinationV1(), Logger: log})
//	e.Go(func(ctx context.Context) { publish(ctx) }) // runs while leading
//	go e.Run(ctx)
//	term, ok := e.Leading()
//
// # Two leaders never run a job at once
//
// A leader renews its Lease every RetryPeriod; when it has not managed to
// for RenewDeadline it stops leading: Leading reports false, the jobs'
// context is cancelled, and the elector waits for them to return. That
// happens at most RetryPeriod+RenewDeadline after its last renewal was
// sent, and another replica can take the Lease only LeaseDuration after it
// saw that renewal; New refuses durations that leave no margin between the
// two. A job must therefore return promptly once its context ends (a
// warning is logged when one outlives the margin).
//
// client-go's own ReleaseOnCancel is not used: it gives the Lease up
// before the jobs' context is even cancelled. Run releases the Lease
// itself when its context ends, after the jobs have returned, so that a
// replica shutting down hands over at once instead of after LeaseDuration.
// Leadership lost because the Lease could not be renewed is never
// released: the Lease expires.
//
// # Terms
//
// Leading returns a term with the leadership: the Lease's
// leaderTransitions as this replica wrote it when it acquired the Lease,
// plus one. client-go adds one to leaderTransitions whenever the Lease
// changes holder, so each new leader has a larger term than every leader
// before it; a replica that takes the Lease back from itself keeps its
// term, as no other leader came between. ca fences its writes with the
// term, so that a leader that lost its Lease without knowing yet takes no
// step once a newer leader has written. The term starts again at one if
// the Lease is deleted: do not delete it while replicas run.
//
// Identities must be unique among the replicas running at once: two
// electors with one identity both believe they hold the Lease.
//
// The elector runs on the wall clock: the Lease's times are compared
// across replicas, and client-go's timers take no other clock.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coordinationv1 "k8s.io/client-go/kubernetes/typed/coordination/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/klog/v2"
)

// Defaults of Config.
const (
	DefaultNamespace     = "meshca-system"
	DefaultName          = "meshca-leader"
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// namespaceFile holds the namespace of the pod a process runs in.
const namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Metrics is what an Elector reports. Implementations must be safe for
// concurrent use.
type Metrics interface {
	// Leading says whether this replica leads now.
	Leading(leading bool)
	// NewLeader counts a change of the Lease's holder to a new leader
	// (not to nobody), as this replica observed it.
	NewLeader()
}

type nopMetrics struct{}

func (nopMetrics) Leading(bool) {}
func (nopMetrics) NewLeader()   {}

// Config configures an Elector. Zero fields get the defaults documented.
type Config struct {
	// Client reaches the Lease (clientset.CoordinationV1()). Required. The
	// replica needs get, create and update on leases in Namespace.
	Client coordinationv1.LeasesGetter
	// Namespace of the Lease. Default: the namespace of the pod this
	// process runs in (its service account's namespace file), else
	// DefaultNamespace.
	Namespace string
	// Name of the Lease. Default DefaultName.
	Name string
	// Identity of this replica in the Lease, unique among the replicas
	// running at once. Default <hostname>_<pid> (in a pod, the hostname is
	// the pod's name).
	Identity string
	// LeaseDuration is how long others wait, after last seeing the leader
	// renew, before they take the Lease; whole seconds (the Lease counts
	// in seconds). Default DefaultLeaseDuration.
	LeaseDuration time.Duration
	// RenewDeadline is how long the leader keeps trying to renew before it
	// stops leading. RenewDeadline+RetryPeriod must be below LeaseDuration.
	// Default DefaultRenewDeadline.
	RenewDeadline time.Duration
	// RetryPeriod is how often the leader renews and the others try to
	// take the Lease. Default DefaultRetryPeriod.
	RetryPeriod time.Duration
	// Logger defaults to discarding; client-go's own messages about the
	// election go to it too. Metrics defaults to a no-op.
	Logger  *slog.Logger
	Metrics Metrics
}

// PodNamespace is the namespace of the pod this process runs in, or ""
// outside one.
func PodNamespace() string {
	b, err := os.ReadFile(namespaceFile)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// DefaultIdentity is <hostname>_<pid>.
func DefaultIdentity() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "meshca"
	}
	return host + "_" + strconv.Itoa(os.Getpid())
}

func (c *Config) setDefaults() error {
	if c.Client == nil {
		return errors.New("leader: a Kubernetes client is required")
	}
	if c.Namespace == "" {
		if c.Namespace = PodNamespace(); c.Namespace == "" {
			c.Namespace = DefaultNamespace
		}
	}
	if c.Name == "" {
		c.Name = DefaultName
	}
	if c.Identity == "" {
		c.Identity = DefaultIdentity()
	}
	if c.LeaseDuration == 0 {
		c.LeaseDuration = DefaultLeaseDuration
	}
	if c.RenewDeadline == 0 {
		c.RenewDeadline = DefaultRenewDeadline
	}
	if c.RetryPeriod == 0 {
		c.RetryPeriod = DefaultRetryPeriod
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = nopMetrics{}
	}
	switch {
	case c.LeaseDuration < time.Second || c.LeaseDuration%time.Second != 0:
		return fmt.Errorf("leader: lease duration %s: must be whole seconds", c.LeaseDuration)
	case c.RenewDeadline <= 0 || c.RetryPeriod <= 0:
		return errors.New("leader: renew deadline and retry period must be positive")
	case c.RenewDeadline+c.RetryPeriod >= c.LeaseDuration:
		// A leader stops at most RetryPeriod+RenewDeadline after its last
		// renewal; others may take over LeaseDuration after it.
		return fmt.Errorf("leader: renew deadline %s plus retry period %s must be below the lease duration %s, or a leader that cannot renew may still run its jobs when another takes over",
			c.RenewDeadline, c.RetryPeriod, c.LeaseDuration)
	case float64(c.RenewDeadline) <= leaderelection.JitterFactor*float64(c.RetryPeriod):
		return fmt.Errorf("leader: renew deadline %s must exceed %.1f times the retry period %s", c.RenewDeadline, leaderelection.JitterFactor, c.RetryPeriod)
	}
	return nil
}

// Elector takes part in the election of one Lease and runs jobs while it
// leads.
type Elector struct {
	cfg  Config
	lock *observedLock

	mu         sync.Mutex
	jobs       []func(context.Context)
	cur        *term  // while leading
	lastLeader string // the last new leader counted
}

// term is one time of leading: from acquiring the Lease to losing it.
type term struct {
	n       uint64
	stopped bool // set once this term ended; it never starts after
	ctx     context.Context
	cancel  context.CancelFunc
	jobs    sync.WaitGroup
}

// New checks cfg and returns an Elector; Run starts it.
func New(cfg Config) (*Elector, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	lock := &observedLock{Interface: &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: cfg.Namespace, Name: cfg.Name},
		Client:     cfg.Client,
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}}
	return &Elector{cfg: cfg, lock: lock}, nil
}

// Go has job run whenever this replica leads: it starts, in its own
// goroutine, each time the Lease is acquired (at once if this replica
// leads now), with a context that ends when the leadership does. Before
// the Lease can be taken by another replica, or released, the elector
// waits for job to return, so job must return promptly when its context
// ends. A job may also return earlier, for this term.
func (e *Elector) Go(job func(ctx context.Context)) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.jobs = append(e.jobs, job)
	if t := e.cur; t != nil {
		t.jobs.Go(func() { job(t.ctx) })
	}
}

// Leading reports whether this replica leads, and its term (see the
// package doc), for ca.Config.Leader. It reports false as soon as the last
// renewal of the Lease is RenewDeadline old, even before the jobs are told
// to stop.
func (e *Elector) Leading() (uint64, bool) {
	e.mu.Lock()
	t := e.cur
	e.mu.Unlock()
	if t == nil {
		return 0, false
	}
	held, _, sent := e.lock.state()
	if !held || time.Since(sent) >= e.cfg.RenewDeadline {
		return 0, false
	}
	return t.n, true
}

// Run takes part in the election until ctx ends: it acquires the Lease
// when it can, runs the jobs while it holds it, and tries again when it
// loses it. When ctx ends it stops the jobs, waits for them, and then
// releases the Lease if it holds it. It returns ctx's error.
func (e *Elector) Run(ctx context.Context) error {
	logCtx := klog.NewContext(ctx, logr.FromSlogHandler(e.cfg.Logger.Handler()))
	log := e.cfg.Logger.With("lease", e.cfg.Namespace+"/"+e.cfg.Name, "identity", e.cfg.Identity)
	log.Info("leader election: contending")
	for ctx.Err() == nil {
		t := &term{}
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:          e.lock,
			LeaseDuration: e.cfg.LeaseDuration,
			RenewDeadline: e.cfg.RenewDeadline,
			RetryPeriod:   e.cfg.RetryPeriod,
			Name:          e.cfg.Name,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { e.start(ctx, t, log) },
				OnStoppedLeading: func() { e.stop(t, log) },
				OnNewLeader:      e.newLeader,
			},
		})
		if err != nil {
			return err // checked by New already
		}
		// Run returns when ctx ends or the Lease is lost, after
		// OnStoppedLeading has stopped the jobs.
		le.Run(logCtx)
	}
	e.release(log)
	return ctx.Err()
}

// start begins term t: this replica acquired the Lease.
func (e *Elector) start(ctx context.Context, t *term, log *slog.Logger) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t.stopped { // client-go calls OnStartedLeading in a goroutine: it can come after OnStoppedLeading
		return
	}
	_, transitions, _ := e.lock.state()
	t.n = uint64(transitions) + 1 //nolint:gosec // client-go only ever adds one to a count that starts at 0
	t.ctx, t.cancel = context.WithCancel(ctx)
	e.cur = t
	for _, job := range e.jobs {
		t.jobs.Go(func() { job(t.ctx) })
	}
	e.cfg.Metrics.Leading(true)
	log.Info("leader election: leading", "term", t.n)
}

// stop ends term t (if it began): its jobs are cancelled, and stop returns
// once they have returned.
func (e *Elector) stop(t *term, log *slog.Logger) {
	e.mu.Lock()
	t.stopped = true
	if e.cur != t {
		e.mu.Unlock()
		return
	}
	e.cur = nil
	t.cancel()
	e.mu.Unlock()
	e.cfg.Metrics.Leading(false)
	log.Info("leader election: stopped leading, stopping the leader's jobs", "term", t.n)
	done := make(chan struct{})
	go func() { t.jobs.Wait(); close(done) }()
	margin := e.cfg.LeaseDuration - e.cfg.RenewDeadline - e.cfg.RetryPeriod
	select {
	case <-done:
	case <-time.After(margin):
		log.Warn("leader election: the leader's jobs are still running after the lease's margin: another replica may be running them too", "margin", margin)
		<-done
	}
	log.Info("leader election: the leader's jobs have stopped", "term", t.n)
}

// newLeader counts a change of the Lease's holder to another replica.
func (e *Elector) newLeader(identity string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if identity == "" || identity == e.lastLeader {
		return
	}
	e.lastLeader = identity
	e.cfg.Metrics.NewLeader()
	e.cfg.Logger.Info("leader election: new leader", "leader", identity)
}

// release gives the Lease up if this replica holds it: with no holder and
// a one-second duration, so the next replica takes it at its next try. It
// is called when the jobs have stopped.
func (e *Elector) release(log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), e.cfg.RenewDeadline)
	defer cancel()
	rec, _, err := e.lock.Get(ctx)
	if err != nil || rec.HolderIdentity != e.cfg.Identity {
		return
	}
	now := metav1.NewTime(time.Now())
	// The update carries the resourceVersion read: it fails, changing
	// nothing, if another replica took the Lease in between.
	err = e.lock.Update(ctx, resourcelock.LeaderElectionRecord{
		LeaderTransitions: rec.LeaderTransitions, LeaseDurationSeconds: 1, RenewTime: now, AcquireTime: now,
	})
	if err != nil {
		log.Warn("leader election: releasing the lease failed: another replica takes over once it expires", "err", err)
		return
	}
	log.Info("leader election: lease released")
}

// observedLock is the Lease lock that remembers this replica's last
// successful write of the Lease: whether it names this replica as the
// holder, its leaderTransitions (the term) and when it was sent.
type observedLock struct {
	resourcelock.Interface

	mu          sync.Mutex
	held        bool
	transitions int
	sent        time.Time
}

// Create implements resourcelock.Interface.
func (l *observedLock) Create(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	sent := time.Now()
	err := l.Interface.Create(ctx, rec)
	l.wrote(rec, sent, err)
	return err
}

// Update implements resourcelock.Interface.
func (l *observedLock) Update(ctx context.Context, rec resourcelock.LeaderElectionRecord) error {
	sent := time.Now()
	err := l.Interface.Update(ctx, rec)
	l.wrote(rec, sent, err)
	return err
}

func (l *observedLock) wrote(rec resourcelock.LeaderElectionRecord, sent time.Time, err error) {
	if err != nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held = rec.HolderIdentity == l.Identity()
	l.transitions, l.sent = rec.LeaderTransitions, sent
}

func (l *observedLock) state() (held bool, transitions int, sent time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held, l.transitions, l.sent
}
