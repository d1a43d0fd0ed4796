package ca_test

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestRevocationOneRule: the issuance listing and the renewal check judge
// the same certificate the same way, also when the revocation falls inside
// the second in which the certificate was issued (its NotBefore carries
// whole seconds, its record the exact instant).
func TestRevocationOneRule(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name        string
		issueAt     time.Duration // after t0
		revokeAt    time.Duration
		wantRevoked bool
	}{
		{"revoked long after issue", 0, time.Hour, true},
		{"revoked at the issuing instant", 700 * time.Millisecond, 700 * time.Millisecond, true},
		{"revoked inside the issuing second, before the instant", 700 * time.Millisecond, 500 * time.Millisecond, true},
		{"revoked the second before", 700 * time.Millisecond, -300 * time.Millisecond, false},
		{"issued a minute after", time.Minute, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := clocktest.New(t0)
			a := newAuthority(t, storetest.NewMem(), clk, nil)
			clk.Advance(tc.issueAt)
			iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), Identity: identity(fooID)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String(), RevokedAt: t0.Add(tc.revokeAt)}); err != nil {
				t.Fatal(err)
			}
			checked := errors.Is(a.CheckRevoked(ctx, []*x509.Certificate{leafOf(t, iss)}, fooID), attestor.ErrRevoked)
			recs, err := a.Issuances(ctx, store.IssuanceFilter{})
			if err != nil || len(recs) != 1 {
				t.Fatalf("Issuances = %v, %v", recs, err)
			}
			if checked != tc.wantRevoked || recs[0].Revoked != tc.wantRevoked {
				t.Fatalf("renewal check says revoked=%v, listing says %v; want %v", checked, recs[0].Revoked, tc.wantRevoked)
			}
		})
	}
}

func TestRevokeRefusesBadEntries(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	for name, r := range map[string]store.Revocation{
		"nothing":          {},
		"both":             {Serial: "1f", SPIFFEID: fooID.String()},
		"serial not hex":   {Serial: "xyz"},
		"serial zero":      {Serial: "00"},
		"not a SPIFFE ID":  {SPIFFEID: "https://example.org/x"},
		"negative serial":  {Serial: "-1f"},
		"empty after trim": {Serial: "0x"},
		"plus sign":        {Serial: "+1f"},
		"underscores":      {Serial: "1_f"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := a.Revoke(context.Background(), r); !errors.Is(err, ca.ErrInvalidRevocation) {
				t.Fatalf("Revoke(%+v) = %v, want ErrInvalidRevocation", r, err)
			}
		})
	}
}

// TestPruneExpiredJoinTokensAndRevocations: the maintenance prune deletes
// join tokens expired for longer than the retention (a late replay is still
// told from an unknown token until then) and deny-list entries once no
// certificate they cover can still be valid, and nothing earlier.
func TestPruneExpiredJoinTokensAndRevocations(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	a := newAuthority(t, st, clk, func(c *ca.Config) { c.Retention = 48 * time.Hour })
	iss, err := a.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), TTL: time.Hour, Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	bySerial, err := a.Revoke(ctx, store.Revocation{Serial: iss.Record.Serial})
	if err != nil || !bySerial.ExpiresAt.Equal(iss.Record.NotAfter) {
		t.Fatalf("serial revocation expires %v (%v), want the certificate's NotAfter %v", bySerial.ExpiresAt, err, iss.Record.NotAfter)
	}
	byID, err := a.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String()})
	if err != nil || !byID.ExpiresAt.After(t0.Add(ca.DefaultIntermediateTTL)) {
		t.Fatalf("ID revocation expires %v (%v), want after the longest a leaf issued before it may live", byID.ExpiresAt, err)
	}
	if _, _, err := a.CreateJoinToken(ctx, fooID, 30*time.Minute); err != nil {
		t.Fatal(err)
	}
	if p, err := a.Prune(ctx); err != nil || p != (ca.Pruned{}) {
		t.Fatalf("fresh Prune = %+v, %v; want nothing", p, err)
	}
	clk.Advance(31 * time.Minute) // the token expired: kept for the retention
	if p, err := a.Prune(ctx); err != nil || p != (ca.Pruned{}) {
		t.Fatalf("Prune after the token expired = %+v, %v; want nothing yet", p, err)
	}
	clk.Advance(30 * time.Minute) // the serial's certificate expired
	if p, err := a.Prune(ctx); err != nil || p != (ca.Pruned{Revocations: 1}) {
		t.Fatalf("Prune after the certificate expired = %+v, %v", p, err)
	}
	clk.Advance(48 * time.Hour) // past the retention of the token and the record
	if p, err := a.Prune(ctx); err != nil || p != (ca.Pruned{Issuances: 1, JoinTokens: 1}) {
		t.Fatalf("Prune past the retention = %+v, %v", p, err)
	}
	if revs, _ := st.Revocations(ctx, iss.Record.Serial, fooID.String()); len(revs) != 1 || revs[0].SPIFFEID == "" {
		t.Fatalf("left %v, want the ID's revocation only", revs)
	}
	clk.Advance(ca.DefaultIntermediateTTL)
	if p, err := a.Prune(ctx); err != nil || p.Revocations != 1 {
		t.Fatalf("Prune after every covered certificate expired = %+v, %v", p, err)
	}
}

// TestIDRevocationOutlivesLongerPastSettings: a certificate issued under
// longer lifetimes than today's keeps its identity's revocation alive until
// it expires (the issuance log knows its NotAfter), although today's
// lifetimes alone would let the entry go earlier.
func TestIDRevocationOutlivesLongerPastSettings(t *testing.T) {
	ctx := context.Background()
	st := storetest.NewMem()
	clk := clocktest.New(t0)
	long := newAuthority(t, st, clk, func(c *ca.Config) { c.IntermediateTTL = 30 * 24 * time.Hour; c.MaxTTL = 14 * 24 * time.Hour })
	iss, err := long.Sign(ctx, ca.SignRequest{CSR: csrPEM(t, p256(t), fooCSR()), TTL: 14 * 24 * time.Hour, Identity: identity(fooID)})
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Hour)
	short := newAuthority(t, st, clk, func(c *ca.Config) {
		c.IntermediateTTL = 2 * 24 * time.Hour
		c.MaxTTL = 24 * time.Hour
		c.DefaultTTL = time.Hour
	})
	rev, err := short.Revoke(ctx, store.Revocation{SPIFFEID: fooID.String()})
	if err != nil {
		t.Fatal(err)
	}
	if rev.ExpiresAt.Before(iss.Record.NotAfter) {
		t.Fatalf("the revocation expires %v, before the revoked certificate's NotAfter %v", rev.ExpiresAt, iss.Record.NotAfter)
	}
	clk.Advance(3 * 24 * time.Hour)
	if _, err := short.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if err := short.CheckRevoked(ctx, []*x509.Certificate{leafOf(t, iss)}, fooID); !errors.Is(err, attestor.ErrRevoked) {
		t.Fatalf("a revoked certificate valid for 10 more days is no longer revoked: %v", err)
	}
}

func TestCreateJoinTokenRefuses(t *testing.T) {
	a := newAuthority(t, storetest.NewMem(), clocktest.New(t0), nil)
	for name, tc := range map[string]struct {
		id  string
		ttl time.Duration
	}{
		"other trust domain": {"spiffe://evil.org/vm/1", time.Hour},
		"negative TTL":       {fooID.String(), -time.Second},
		"over the maximum":   {fooID.String(), jointoken.MaxTTL + time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := a.CreateJoinToken(context.Background(), mustID(t, tc.id), tc.ttl)
			if !errors.Is(err, ca.ErrInvalidJoinToken) {
				t.Fatalf("CreateJoinToken = %v, want ErrInvalidJoinToken", err)
			}
		})
	}
}

func mustID(t *testing.T, s string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromString(s)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
