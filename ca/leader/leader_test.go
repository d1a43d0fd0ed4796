package leader_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/leader"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/kubeenv"
	"github.com/meshca/meshca/internal/storetest"
)

// These tests run against a real kube-apiserver and etcd (make testenv).
func TestMain(m *testing.M) { kubeenv.Main(m) }

// Short durations keep the tests fast; their proportions are the
// defaults': RenewDeadline+RetryPeriod below LeaseDuration.
const (
	leaseDuration = 2 * time.Second
	renewDeadline = time.Second
	retryPeriod   = 200 * time.Millisecond
	// jobStopping is how long a job takes to return once told to stop
	// (a write it finishes): the Lease must not pass on before.
	jobStopping = 100 * time.Millisecond
)

// lease returns a namespace and a Lease name of their own for this run:
// the shared API server keeps objects across go test -count=N.
func lease(t *testing.T, env *kubeenv.Env) (ns, name string) {
	t.Helper()
	ns = "leader"
	_, err := env.Client.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return ns, "lease-" + strconv.FormatInt(time.Now().UnixNano()%(1<<30), 36)
}

// timeline records which electors run the job, and every moment two ran
// it at once or one ran it while another said it was leading.
type timeline struct {
	mu       sync.Mutex
	running  map[string]bool
	electors map[string]*leader.Elector
	starts   []string
	overlaps []string
}

func newTimeline() *timeline {
	return &timeline{running: map[string]bool{}, electors: map[string]*leader.Elector{}}
}

// job is the leader-only job of elector id.
func (tl *timeline) job(id string) func(context.Context) {
	return func(ctx context.Context) {
		tl.mu.Lock()
		for other, e := range tl.electors {
			if other == id {
				continue
			}
			if tl.running[other] {
				tl.overlaps = append(tl.overlaps, fmt.Sprintf("%s started while %s was running", id, other))
			}
			if _, leading := e.Leading(); leading {
				tl.overlaps = append(tl.overlaps, fmt.Sprintf("%s started while %s said it was leading", id, other))
			}
		}
		tl.running[id] = true
		tl.starts = append(tl.starts, id)
		tl.mu.Unlock()
		<-ctx.Done()
		time.Sleep(jobStopping) // the job's last write
		tl.mu.Lock()
		tl.running[id] = false
		tl.mu.Unlock()
	}
}

// runner is who runs the job now, "" for nobody.
func (tl *timeline) runner() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for id, r := range tl.running {
		if r {
			return id
		}
	}
	return ""
}

func (tl *timeline) check(t *testing.T) {
	t.Helper()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for _, o := range tl.overlaps {
		t.Error(o)
	}
}

// elector is one replica: an Elector with the job, running until stop.
type elector struct {
	*leader.Elector
	stop context.CancelFunc
	done chan struct{}
}

func startElector(t *testing.T, tl *timeline, client kubernetes.Interface, ns, name, id string) *elector {
	t.Helper()
	e, err := leader.New(leader.Config{Client: client.CoordinationV1(), Namespace: ns, Name: name, Identity: id,
		LeaseDuration: leaseDuration, RenewDeadline: renewDeadline, RetryPeriod: retryPeriod})
	if err != nil {
		t.Fatal(err)
	}
	tl.mu.Lock()
	tl.electors[id] = e
	tl.mu.Unlock()
	e.Go(tl.job(id))
	ctx, cancel := context.WithCancel(context.Background())
	el := &elector{Elector: e, stop: cancel, done: make(chan struct{})}
	go func() { _ = e.Run(ctx); close(el.done) }()
	t.Cleanup(func() { cancel(); <-el.done })
	return el
}

func TestConfigDefaults(t *testing.T) {
	env := kubeenv.Get(t)
	e, err := leader.New(leader.Config{Client: env.Client.CoordinationV1()})
	if err != nil {
		t.Fatal(err)
	}
	c := leader.ConfigOf(e)
	if c.Namespace != leader.DefaultNamespace || c.Name != leader.DefaultName || c.Identity != leader.DefaultIdentity() ||
		c.LeaseDuration != 15*time.Second || c.RenewDeadline != 10*time.Second || c.RetryPeriod != 2*time.Second {
		t.Errorf("defaults: %+v", c)
	}
	for name, tc := range map[string]leader.Config{
		"no client":                         {},
		"lease of a fraction of a second":   {LeaseDuration: 1500 * time.Millisecond, RenewDeadline: 500 * time.Millisecond, RetryPeriod: 100 * time.Millisecond},
		"renewal outlasting the lease":      {LeaseDuration: 15 * time.Second, RenewDeadline: 14 * time.Second},
		"renew deadline below retries":      {RenewDeadline: 2 * time.Second, RetryPeriod: 2 * time.Second},
		"renew deadline equal to lease":     {LeaseDuration: 10 * time.Second},
		"negative retry period":             {RetryPeriod: -time.Second},
		"renewal plus retry equal to lease": {LeaseDuration: 12 * time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			if name != "no client" {
				tc.Client = env.Client.CoordinationV1()
			}
			if _, err := leader.New(tc); err == nil {
				t.Errorf("New(%+v) accepted", tc)
			}
		})
	}
}

// TestOneLeaderAndHandover: of two electors on one Lease exactly one runs
// the job; when it stops (its context cancelled, as on SIGTERM) it releases
// the Lease after its job has returned, and the other takes over well
// within the lease duration; the new leader's term is larger.
func TestOneLeaderAndHandover(t *testing.T) {
	env := kubeenv.Get(t)
	ns, name := lease(t, env)
	tl := newTimeline()
	a := startElector(t, tl, env.Client, ns, name, "a")
	clocktest.Eventually(t, "a leads", func() bool { return tl.runner() == "a" })
	termA, ok := a.Leading()
	if !ok || termA == 0 {
		t.Fatalf("a runs the job but Leading = %d, %v", termA, ok)
	}
	b := startElector(t, tl, env.Client, ns, name, "b")
	clocktest.Eventually(t, "b sees a as the leader", func() bool {
		l, err := env.Client.CoordinationV1().Leases(ns).Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity == "a"
	})
	if _, ok := b.Leading(); ok {
		t.Fatal("b leads beside a")
	}

	stopped := time.Now()
	a.stop()
	clocktest.Eventually(t, "b takes over", func() bool { return tl.runner() == "b" })
	if took := time.Since(stopped); took > leaseDuration {
		t.Errorf("b took over %s after a stopped, want at once (a released the Lease)", took)
	}
	<-a.done
	termB, ok := b.Leading()
	if !ok || termB <= termA {
		t.Errorf("b's term %d (leading %v), want above a's %d", termB, ok, termA)
	}
	if _, ok := a.Leading(); ok {
		t.Error("a still leads after it stopped")
	}
	tl.check(t)
}

// TestPartitionedLeader: the leader is cut off from the API server (a
// network partition, or a leader too slow to renew). It stops its job,
// without releasing the Lease it cannot reach, before the other replica
// may take the Lease; the other takes over once the Lease expires, within
// the lease duration of the cut (plus its retry period). And in the store
// two replicas share, the fence holds against a leader that has not
// noticed yet: once the new leader has written, a scheduled step of the
// root rotation taken under the old term is refused.
func TestPartitionedLeader(t *testing.T) {
	env := kubeenv.Get(t)
	ctx := context.Background()
	ns, name := lease(t, env)
	tl := newTimeline()
	fw := env.Forward(t)
	partitioned, err := kubernetes.NewForConfig(fw.Config())
	if err != nil {
		t.Fatal(err)
	}
	a := startElector(t, tl, partitioned, ns, name, "a")
	clocktest.Eventually(t, "a leads", func() bool { return tl.runner() == "a" })
	termA, _ := a.Leading()
	b := startElector(t, tl, env.Client, ns, name, "b")

	// Two replicas of one CA on one store, each asking its elector; a
	// can be made to believe it still leads under its old term.
	st := storetest.NewMem()
	clk := clocktest.New(time.Now())
	var stale atomic.Bool
	authA := newAuthority(t, st, clk, func() (uint64, bool) {
		if stale.Load() {
			return termA, true
		}
		return a.Leading()
	})
	authB := newAuthority(t, st, clk, b.Leading)
	if fence := caState(t, st).LeaderFence; fence != termA {
		t.Fatalf("fence %d after the leader's first write, want its term %d", fence, termA)
	}
	if _, err := authB.RotateRoot(ctx, ca.RootRotationRequest{Action: ca.RootRotationStart}); err != nil {
		t.Fatal(err) // an operator's request: any replica takes it
	}

	cut := time.Now()
	fw.Stop()
	clocktest.Eventually(t, "b takes over", func() bool { return tl.runner() == "b" })
	took := time.Since(cut)
	t.Logf("b took over %s after a was cut off", took.Round(time.Millisecond))
	if took > leaseDuration+time.Second {
		t.Errorf("b took over %s after the cut, want within the lease duration %s and a retry", took, leaseDuration)
	}
	tl.check(t)
	termB, ok := b.Leading()
	if !ok || termB <= termA {
		t.Fatalf("b's term %d (leading %v), want above a's %d", termB, ok, termA)
	}

	if err := authB.Rotate(ctx); err != nil { // the new leader's first write raises the fence
		t.Fatal(err)
	}
	clk.Advance(25 * time.Hour) // past the overlap: the root switch is due
	for _, believes := range []bool{false, true} {
		stale.Store(believes)
		if err := authA.Rotate(ctx); err != nil {
			t.Fatal(err)
		}
		if p := caState(t, st).RootRotation.Phase; p != store.PhasePrepared {
			t.Fatalf("a (believing it leads: %v) took the switch under term %d (phase %s)", believes, termA, p)
		}
	}
	if err := authB.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if s := caState(t, st); s.RootRotation.Phase != store.PhaseSwitched || s.LeaderFence != termB {
		t.Fatalf("after the leader's rotation: phase %s, fence %d; want switched under term %d", s.RootRotation.Phase, s.LeaderFence, termB)
	}
}

func newAuthority(t *testing.T, st store.Store, clk *clocktest.Fake, leading func() (uint64, bool)) *ca.Authority {
	t.Helper()
	a, err := ca.New(context.Background(), ca.Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		Store: st, Clock: clk, Leader: leading})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func caState(t *testing.T, st store.Store) *store.CAState {
	t.Helper()
	s, err := st.LoadCAState(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
