package bundle_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/meshca/meshca/ca/bundle"
	"github.com/meshca/meshca/ca/bundle/internal/bundletest"
	"github.com/meshca/meshca/internal/clock/clocktest"
)

// TestPoll: the first bundle is passed on at once, a change only at the
// next poll, an unchanged or empty bundle never.
func TestPoll(t *testing.T) {
	clk := clocktest.New(time.Unix(1_700_000_000, 0))
	src := bundletest.NewSource([]byte("one"))
	got := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { bundle.Poll(ctx, src, time.Second, clk, func(pem []byte) { got <- string(pem) }) })
	defer func() { cancel(); wg.Wait() }()

	next := func(want string) {
		t.Helper()
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("changed(%q), want %q", g, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("changed not called with %q", want)
		}
	}
	// tick lets one poll pass: it waits for Poll to sleep, then wakes it.
	tick := func() {
		t.Helper()
		clocktest.Eventually(t, "poll waiting", func() bool { return clk.Waiters() == 1 })
		clk.Advance(time.Second)
	}
	next("one")
	src.Set([]byte("two"))
	select {
	case g := <-got:
		t.Fatalf("changed(%q) before the next poll", g)
	default:
	}
	tick()
	next("two")
	for _, b := range []string{"two", ""} { // unchanged, then empty
		src.Set([]byte(b))
		tick()
	}
	src.Set([]byte("three"))
	tick()
	next("three")
}

// TestAddFlags: the flags' defaults are the documented ones.
func TestAddFlags(t *testing.T) {
	var c bundle.Config
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	c.AddFlags(fs)
	if err := fs.Parse([]string{"--bundle-configmap-namespaces=a,team-*"}); err != nil {
		t.Fatal(err)
	}
	want := bundle.Config{
		ConfigMap: "meshca-root-cert", ConfigMapNamespaces: []string{"a", "team-*"}, EndpointProfile: "https_spiffe",
		RefreshHint: 5 * time.Minute, SyncInterval: 10 * time.Second, Resync: 5 * time.Minute,
	}
	if c.ConfigMap != want.ConfigMap || len(c.ConfigMapNamespaces) != 2 || c.ConfigMapNamespaces[1] != "team-*" ||
		c.EndpointProfile != want.EndpointProfile || c.RefreshHint != want.RefreshHint ||
		c.SyncInterval != want.SyncInterval || c.Resync != want.Resync || c.EndpointAddr != "" || c.ClusterTrustBundleSigner != "" {
		t.Errorf("flags give %+v, want %+v", c, want)
	}
}

// notifyingSource is a Source that closes its channel when its roots
// change, as ca.Authority does.
type notifyingSource struct {
	mu      sync.Mutex
	pem     []byte
	changed chan struct{}
}

func (s *notifyingSource) RootsPEM() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pem
}

func (s *notifyingSource) RootsChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *notifyingSource) set(pem string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pem = []byte(pem)
	close(s.changed)
	s.changed = make(chan struct{})
}

// TestPollWakesOnNotice: a Source that says when its roots change has
// them published at once, without waiting for the next poll (the fake
// clock never moves here).
func TestPollWakesOnNotice(t *testing.T) {
	clk := clocktest.New(time.Unix(1_700_000_000, 0))
	src := &notifyingSource{pem: []byte("one"), changed: make(chan struct{})}
	got := make(chan string, 10)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { bundle.Poll(ctx, src, time.Hour, clk, func(pem []byte) { got <- string(pem) }) })
	defer func() { cancel(); wg.Wait() }()
	for _, want := range []string{"one", "two", "three"} {
		if want != "one" {
			src.set(want)
		}
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("changed(%q), want %q", g, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%q not published without a poll", want)
		}
	}
}
