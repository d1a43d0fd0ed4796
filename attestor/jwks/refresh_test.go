package jwks_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/meshca/meshca/attestor/jwks"
)

// TestScheduledRefresh is finding 5 (in part) of the security hardening
// issue: the key set is fetched again once it is RefreshInterval old, not
// only for an unknown kid, and the new set replaces the old one, so a key
// the issuer removed stops verifying; a failed refresh keeps the cached
// keys, so an issuer outage does not stop attestation.
func TestScheduledRefresh(t *testing.T) {
	testKeys(t)
	const interval = 10 * time.Minute
	ec1, ec2 := pub("ec1", ecKey, jose.ES256), pub("ec2", ecKey2, jose.ES256)
	type step struct {
		name        string
		advance     time.Duration
		publish     []jose.JSONWebKey // when not nil, the issuer now serves these keys
		fail        bool              // the issuer fails from now on
		recover     bool              // the issuer answers again from now on
		kid         string
		wantErr     string // "" means accepted
		wantFetches int
	}
	tests := []struct {
		name     string
		interval time.Duration // 0: the default
		steps    []step
	}{
		{
			name: "a removed key stops verifying after the interval", interval: interval,
			steps: []step{
				{name: "first token fetches", kid: "ec1", wantFetches: 1},
				{name: "issuer removes ec1", publish: []jose.JSONWebKey{ec2}, advance: interval - time.Second, kid: "ec1", wantFetches: 1},
				{name: "at the interval the set is fetched again", advance: time.Second, kid: "ec1", wantErr: "unknown key", wantFetches: 2},
				{name: "the new key verifies", kid: "ec2", wantFetches: 2},
				{name: "and ec1 stays refused", advance: time.Hour, kid: "ec1", wantErr: "unknown key", wantFetches: 3},
			},
		},
		{
			name: "the default interval is five minutes",
			steps: []step{
				{name: "first token fetches", kid: "ec1", wantFetches: 1},
				{name: "issuer removes ec1", publish: []jose.JSONWebKey{ec2}, advance: jwks.DefaultRefreshInterval - time.Nanosecond, kid: "ec1", wantFetches: 1},
				{name: "refreshed at five minutes", advance: time.Nanosecond, kid: "ec1", wantErr: "unknown key", wantFetches: 2},
			},
		},
		{
			name: "a key swapped behind the same kid", interval: interval,
			steps: []step{
				{name: "old key", kid: "ec1", wantFetches: 1},
				{name: "issuer swaps the key behind ec1", publish: []jose.JSONWebKey{pub("ec1", ecKey2, jose.ES256)}, advance: time.Minute, kid: "ec1", wantFetches: 1},
				{name: "refreshed: the old key no longer verifies", advance: interval, kid: "ec1", wantErr: "signature does not verify", wantFetches: 2},
			},
		},
		{
			name: "a failed refresh keeps the cached keys", interval: interval,
			steps: []step{
				{name: "first token fetches", kid: "ec1", wantFetches: 1},
				{name: "issuer down at the interval: cached key still verifies", fail: true, advance: interval, kid: "ec1", wantFetches: 2},
				{name: "no retry before MinRefresh", advance: minRefresh - time.Second, kid: "ec1", wantFetches: 2},
				{name: "retry after MinRefresh, still down", advance: time.Second, kid: "ec1", wantFetches: 3},
				{name: "a day into the outage, still cached", advance: 24 * time.Hour, kid: "ec1", wantFetches: 4},
				{name: "an unknown kid during the outage is unavailable", advance: time.Second, kid: "ec2", wantErr: "key set unavailable", wantFetches: 5},
				{name: "issuer back without ec1", recover: true, publish: []jose.JSONWebKey{ec2}, advance: minRefresh, kid: "ec1", wantErr: "unknown key", wantFetches: 6},
				{name: "ec2 verifies", kid: "ec2", wantFetches: 6},
			},
		},
		{
			name: "unknown kids stay rate-limited", interval: interval,
			steps: []step{
				{name: "first token fetches", kid: "ec1", wantFetches: 1},
				{name: "unknown kid refetches once", advance: minRefresh, kid: "x1", wantErr: "unknown key", wantFetches: 2},
				{name: "another unknown kid within MinRefresh does not", advance: minRefresh - time.Second, kid: "x2", wantErr: "unknown key", wantFetches: 2},
				{name: "a scheduled refresh", advance: interval, kid: "ec1", wantFetches: 3},
				{name: "an unknown kid right after it does not refetch", kid: "x3", wantErr: "unknown key", wantFetches: 3},
				{name: "nor just before MinRefresh", advance: minRefresh - time.Second, kid: "x4", wantErr: "unknown key", wantFetches: 3},
				{name: "after MinRefresh it may", advance: time.Second, kid: "x5", wantErr: "unknown key", wantFetches: 4},
			},
		},
	}
	keys := map[string]any{"ec1": ecKey, "ec2": ecKey2, "x1": ecKey, "x2": ecKey, "x3": ecKey, "x4": ecKey, "x5": ecKey}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, ec1)
			f.ks = jwks.NewKeySet(jwks.KeySetConfig{Fetch: f.src.fetch, Clock: f.clk, MinRefresh: minRefresh, RefreshInterval: tc.interval})
			f.v.Keys = f.ks
			doc := f.src.doc
			for _, s := range tc.steps {
				f.clk.Advance(s.advance)
				if s.publish != nil {
					doc = jwksDoc(t, s.publish...)
				}
				switch {
				case s.fail:
					f.src.set(nil, errors.New("connection refused"))
				case s.recover || s.publish != nil:
					f.src.set(doc, nil)
				}
				_, err := f.v.Verify(context.Background(), mint(t, jose.ES256, keys[s.kid], s.kid, std(f.clk.Now())), nil)
				switch {
				case s.wantErr == "" && err != nil:
					t.Errorf("%s: Verify() = %v, want success", s.name, err)
				case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)):
					t.Errorf("%s: Verify() = %v, want an error containing %q", s.name, err, s.wantErr)
				}
				if got := f.src.fetches(); got != s.wantFetches {
					t.Errorf("%s: fetches = %d, want %d", s.name, got, s.wantFetches)
				}
			}
		})
	}
}

// TestScheduledRefreshShared: tokens arriving together when the set is due
// share one refresh, and all see its outcome.
func TestScheduledRefreshShared(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := dueRefreshHeld(t)
		ctx := context.Background()
		tok := mint(t, jose.ES256, ecKey, "ec1", std(f.clk.Now()))
		errs := make([]error, 20)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Go(func() { _, errs[i] = f.v.Verify(ctx, tok, nil) })
		}
		synctest.Wait()
		if got := f.src.fetches(); got != 2 {
			t.Errorf("fetches in flight = %d, want 2", got)
		}
		close(f.src.gate)
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, jwks.ErrInvalid) || !strings.Contains(err.Error(), "unknown key") {
				t.Errorf("Verify() #%d = %v, want the removed key refused", i, err)
			}
		}
		if got := f.src.fetches(); got != 2 {
			t.Errorf("fetches = %d, want 2", got)
		}
	})
}

// TestScheduledRefreshSlowIssuer: a token whose key is cached waits at most
// a second for a scheduled refresh that hangs, then the cached keys answer;
// the refresh goes on and serves the tokens after it.
func TestScheduledRefreshSlowIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := dueRefreshHeld(t)
		ctx := context.Background()
		var err error
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, err = f.v.Verify(ctx, mint(t, jose.ES256, ecKey, "ec1", std(f.clk.Now())), nil)
		}()
		synctest.Wait() // parked on the hung fetch
		select {
		case <-done:
			t.Fatal("Verify() returned before the wait for a slow fetch ended")
		default:
		}
		f.clk.Advance(time.Second)
		<-done
		if err != nil {
			t.Fatalf("Verify() while the refresh hangs = %v, want the cached key to verify", err)
		}
		close(f.src.gate)
		synctest.Wait() // the refresh completes
		_, err = f.v.Verify(ctx, mint(t, jose.ES256, ecKey, "ec1", std(f.clk.Now())), nil)
		if !errors.Is(err, jwks.ErrInvalid) || !strings.Contains(err.Error(), "unknown key") {
			t.Fatalf("Verify() after the refresh = %v, want the removed key refused", err)
		}
		if got := f.src.fetches(); got != 2 {
			t.Errorf("fetches = %d, want 2", got)
		}
	})
}

// dueRefreshHeld returns a verifier that has cached ec1, at the time its
// scheduled refresh is due, with the issuer now serving only ec2 and every
// fetch held until f.src.gate is closed.
func dueRefreshHeld(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, pub("ec1", ecKey, jose.ES256))
	if _, err := f.v.Verify(context.Background(), mint(t, jose.ES256, ecKey, "ec1", std(epoch)), nil); err != nil {
		t.Fatal(err)
	}
	f.clk.Advance(jwks.DefaultRefreshInterval)
	f.src.set(jwksDoc(t, pub("ec2", ecKey2, jose.ES256)), nil)
	f.src.gate = make(chan struct{})
	return f
}

// TestKeySetVersion: the version changes when, and only when, a fetch
// brings a different key set, and Recheck does a verification's fetching
// and answers with it (or with the error a verification would meet).
func TestKeySetVersion(t *testing.T) {
	testKeys(t)
	ec1, ec2 := pub("ec1", ecKey, jose.ES256), pub("ec2", ecKey2, jose.ES256)
	f := newFixture(t, ec1)
	if v := f.ks.Version(); v != 0 {
		t.Fatalf("Version() before any fetch = %d, want 0", v)
	}
	steps := []struct {
		name        string
		advance     time.Duration
		publish     []jose.JSONWebKey // when not nil, the issuer now serves these keys
		fail        bool
		kid         string
		wantErr     string
		wantVersion uint64
		wantFetches int
	}{
		{name: "first recheck fetches", kid: "ec1", wantVersion: 1, wantFetches: 1},
		{name: "cached", advance: time.Minute, kid: "ec1", wantVersion: 1, wantFetches: 1},
		{name: "refetched unchanged", advance: jwks.DefaultRefreshInterval, kid: "ec1", wantVersion: 1, wantFetches: 2},
		{name: "a key added", publish: []jose.JSONWebKey{ec1, ec2}, advance: jwks.DefaultRefreshInterval, kid: "ec1", wantVersion: 2, wantFetches: 3},
		{name: "a failed refresh keeps the version", fail: true, advance: jwks.DefaultRefreshInterval, kid: "ec1", wantVersion: 2, wantFetches: 4},
		{name: "the key swapped behind ec1", publish: []jose.JSONWebKey{pub("ec1", ecKey2, jose.ES256)}, advance: jwks.DefaultRefreshInterval, kid: "ec1", wantVersion: 3, wantFetches: 5},
		{name: "ec2 removed: unknown", advance: minRefresh, kid: "ec2", wantErr: "unknown key", wantVersion: 3, wantFetches: 6},
	}
	for _, s := range steps {
		f.clk.Advance(s.advance)
		switch {
		case s.fail:
			f.src.set(nil, errors.New("connection refused"))
		case s.publish != nil:
			f.src.set(jwksDoc(t, s.publish...), nil)
		}
		v, err := f.ks.Recheck(context.Background(), s.kid)
		switch {
		case s.wantErr == "" && err != nil:
			t.Errorf("%s: Recheck() = %v, want success", s.name, err)
		case s.wantErr != "" && (err == nil || !strings.Contains(err.Error(), s.wantErr)):
			t.Errorf("%s: Recheck() = (%d, %v), want an error containing %q", s.name, v, err, s.wantErr)
		case err == nil && v != s.wantVersion:
			t.Errorf("%s: Recheck() = %d, want version %d", s.name, v, s.wantVersion)
		}
		if got := f.ks.Version(); got != s.wantVersion {
			t.Errorf("%s: Version() = %d, want %d", s.name, got, s.wantVersion)
		}
		if got := f.src.fetches(); got != s.wantFetches {
			t.Errorf("%s: fetches = %d, want %d", s.name, got, s.wantFetches)
		}
	}
}
