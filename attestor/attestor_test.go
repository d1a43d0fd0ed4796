package attestor_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/attestor"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("example.org")
	fooID = spiffeid.RequireFromPath(td, "/ns/foo/sa/bar")
	barID = spiffeid.RequireFromPath(td, "/ns/bar/sa/baz")
)

// stub is an Attestor returning a fixed result and counting its calls.
type stub struct {
	name  string
	id    attestor.Identity
	err   error
	calls int
}

func (s *stub) Attest(context.Context, attestor.Credential) (attestor.Identity, error) {
	s.calls++
	return s.id, s.err
}

func TestStaticTokens(t *testing.T) {
	const token = "s3cr3t-token-value"
	a := attestor.NewStaticTokens(map[string]spiffeid.ID{token: fooID, "other": barID})
	tests := []struct {
		name    string
		cred    attestor.Credential
		wantErr error
		wantID  spiffeid.ID
	}{
		{name: "no token", cred: attestor.Credential{}, wantErr: attestor.ErrNoCredential},
		{name: "peer address but no token", cred: attestor.Credential{Peer: "127.0.0.1:1"}, wantErr: attestor.ErrNoCredential},
		{name: "unknown token", cred: attestor.Credential{BearerToken: "not-the-token"}, wantErr: attestor.ErrUnauthenticated},
		{name: "prefix of a known token", cred: attestor.Credential{BearerToken: token[:5]}, wantErr: attestor.ErrUnauthenticated},
		{name: "known token", cred: attestor.Credential{BearerToken: token}, wantID: fooID},
		{name: "second known token", cred: attestor.Credential{BearerToken: "other"}, wantID: barID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := a.Attest(context.Background(), tc.cred)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Attest() error = %v, want %v", err, tc.wantErr)
				}
				if !got.ID.IsZero() {
					t.Errorf("Attest() returned identity %v along with an error", got.ID)
				}
				if tc.cred.BearerToken != "" && strings.Contains(err.Error(), tc.cred.BearerToken) {
					t.Errorf("error %q repeats the presented token", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Attest() error = %v", err)
			}
			if got.ID != tc.wantID {
				t.Errorf("ID = %v, want %v", got.ID, tc.wantID)
			}
			if got.Kind != "dev-token" {
				t.Errorf("Kind = %q, want %q", got.Kind, "dev-token")
			}
			if !strings.HasPrefix(got.Subject, "sha256:") || len(got.Subject) <= len("sha256:") {
				t.Errorf("Subject = %q, want a sha256: fingerprint", got.Subject)
			}
			if strings.Contains(got.Subject, tc.cred.BearerToken) {
				t.Errorf("Subject %q contains the token", got.Subject)
			}
			for k, v := range got.Details {
				if strings.Contains(v, tc.cred.BearerToken) {
					t.Errorf("Details[%q] = %q contains the token", k, v)
				}
			}
		})
	}
}

func TestStaticTokensSubjectIsStable(t *testing.T) {
	a := attestor.NewStaticTokens(map[string]spiffeid.ID{"tok-a": fooID, "tok-b": fooID})
	attest := func(tok string) string {
		t.Helper()
		id, err := a.Attest(context.Background(), attestor.Credential{BearerToken: tok})
		if err != nil {
			t.Fatalf("Attest(%q): %v", tok, err)
		}
		return id.Subject
	}
	if s1, s2 := attest("tok-a"), attest("tok-a"); s1 != s2 {
		t.Errorf("same token gave subjects %q and %q", s1, s2)
	}
	if s1, s2 := attest("tok-a"), attest("tok-b"); s1 == s2 {
		t.Errorf("different tokens gave the same subject %q", s1)
	}
}

func TestChain(t *testing.T) {
	okFoo := attestor.Identity{ID: fooID, Kind: "a", Subject: "foo"}
	okBar := attestor.Identity{ID: barID, Kind: "b", Subject: "bar"}
	noCred := func(name string) *stub { return &stub{name: name, err: attestor.ErrNoCredential} }
	wrappedNoCred := func(name string) *stub {
		return &stub{name: name, err: fmt.Errorf("%s: %w", name, attestor.ErrNoCredential)}
	}
	accept := func(name string, id attestor.Identity) *stub { return &stub{name: name, id: id} }
	refuse := func(name string, kind error) *stub {
		return &stub{name: name, err: fmt.Errorf("%w: %s says no", kind, name)}
	}
	internal := errors.New("store unavailable")

	tests := []struct {
		name string
		// chain is built from these; wantCalls[i] is how often chain[i]
		// must have been asked.
		chain     []*stub
		wantCalls []int
		wantID    attestor.Identity
		wantErr   error
		wantMsg   string
	}{
		{
			name:      "first accepts",
			chain:     []*stub{accept("a", okFoo), accept("b", okBar)},
			wantCalls: []int{1, 0},
			wantID:    okFoo,
		},
		{
			name:      "skips no credential",
			chain:     []*stub{noCred("a"), accept("b", okBar)},
			wantCalls: []int{1, 1},
			wantID:    okBar,
		},
		{
			name:      "skips wrapped no credential",
			chain:     []*stub{wrappedNoCred("a"), noCred("b"), accept("c", okFoo)},
			wantCalls: []int{1, 1, 1},
			wantID:    okFoo,
		},
		{
			name:      "unauthenticated refusal is not bypassed",
			chain:     []*stub{refuse("a", attestor.ErrUnauthenticated), accept("b", okBar)},
			wantCalls: []int{1, 0},
			wantErr:   attestor.ErrUnauthenticated,
			wantMsg:   "a says no",
		},
		{
			name:      "permission denied is not bypassed",
			chain:     []*stub{noCred("a"), refuse("b", attestor.ErrPermissionDenied), accept("c", okFoo)},
			wantCalls: []int{1, 1, 0},
			wantErr:   attestor.ErrPermissionDenied,
			wantMsg:   "b says no",
		},
		{
			name:      "internal error stops the chain",
			chain:     []*stub{{name: "a", err: internal}, accept("b", okBar)},
			wantCalls: []int{1, 0},
			wantErr:   internal,
		},
		{
			name:      "no attestor applies",
			chain:     []*stub{noCred("a"), wrappedNoCred("b")},
			wantCalls: []int{1, 1},
			wantErr:   attestor.ErrUnauthenticated,
			wantMsg:   "no credential",
		},
		{
			name:    "empty chain",
			chain:   nil,
			wantErr: attestor.ErrUnauthenticated,
			wantMsg: "no credential",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ch attestor.Chain
			for _, s := range tc.chain {
				ch = append(ch, s)
			}
			got, err := ch.Attest(context.Background(), attestor.Credential{BearerToken: "x"})
			for i, s := range tc.chain {
				if s.calls != tc.wantCalls[i] {
					t.Errorf("attestor %s called %d times, want %d", s.name, s.calls, tc.wantCalls[i])
				}
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Attest() error = %v, want %v", err, tc.wantErr)
				}
				if errors.Is(err, attestor.ErrNoCredential) {
					t.Errorf("Attest() error %v still wraps ErrNoCredential", err)
				}
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Errorf("Attest() error %q does not contain %q", err, tc.wantMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Attest() error = %v", err)
			}
			if got.ID != tc.wantID.ID || got.Kind != tc.wantID.Kind || got.Subject != tc.wantID.Subject {
				t.Errorf("Attest() = %+v, want %+v", got, tc.wantID)
			}
		})
	}
}

// A Chain is itself an Attestor and can be nested.
var _ attestor.Attestor = attestor.Chain(nil)
