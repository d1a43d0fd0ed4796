package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	pb "istio.io/api/security/v1alpha1"

	"github.com/meshca/meshca/attestor"
	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/server"
	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/clock/clocktest"
	"github.com/meshca/meshca/internal/storetest"
)

// writeCounter counts the writes that reached the store.
type writeCounter struct {
	store.Store
	issuances, tokens, revocations int
}

func (c *writeCounter) RecordIssuance(ctx context.Context, r store.Issuance) error {
	err := c.Store.RecordIssuance(ctx, r)
	if err == nil {
		c.issuances++
	}
	return err
}

func (c *writeCounter) CreateJoinToken(ctx context.Context, t store.JoinToken) error {
	err := c.Store.CreateJoinToken(ctx, t)
	if err == nil {
		c.tokens++
	}
	return err
}

func (c *writeCounter) Revoke(ctx context.Context, r store.Revocation) error {
	err := c.Store.Revoke(ctx, r)
	if err == nil {
		c.revocations++
	}
	return err
}

func (c *writeCounter) writes() int { return c.issuances + c.tokens + c.revocations }

// api is the HTTPS/JSON API's handler over an in-memory store, with the
// static test token for fooID and the admin token, on a fake clock.
type api struct {
	srv  *server.Server
	h    http.Handler
	st   *writeCounter
	auth *ca.Authority
	clk  *clocktest.Fake
}

func newAPI(tb testing.TB) *api {
	tb.Helper()
	clk := clocktest.New(time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC))
	st := &writeCounter{Store: storetest.NewMem()}
	auth, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Store: st, Clock: clk})
	if err != nil {
		tb.Fatal(err)
	}
	srv, err := server.New(server.Config{
		Authority: auth,
		// As the server is run: a chain, which refuses a request that
		// carries no credential at all.
		Attestor:   attestor.Chain{attestor.NewStaticTokens(map[string]spiffeid.ID{fooToken: fooID})},
		AdminToken: adminToken,
		Clock:      clk,
		// Every fuzzed request comes from one address: without this the
		// per-source limit would answer most of them 429 before the
		// handlers parse anything. The limit has its own hostile tests.
		Limits: server.Limits{UnauthenticatedRate: -1},
	})
	if err != nil {
		tb.Fatal(err)
	}
	return &api{srv: srv, h: srv.HTTPSHandler(), st: st, auth: auth, clk: clk}
}

// do serves one request and checks what every answer must be: a status
// the API documents (2xx or 4xx: malformed input is never a server error)
// and a JSON body, an ErrorResponse with a message and a code unless 200.
func (a *api) do(t *testing.T, method, target, rawQuery, authz string, body []byte) (int, []byte) {
	t.Helper()
	r := httptest.NewRequest(method, target, bytes.NewReader(body))
	r.URL.RawQuery = rawQuery
	if authz != "" {
		r.Header.Set("Authorization", authz)
	}
	w := httptest.NewRecorder()
	a.h.ServeHTTP(w, r)
	switch w.Code {
	case http.StatusOK, http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden, http.StatusConflict, http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
	default:
		t.Fatalf("%s %s: status %d for client input: %s", method, target, w.Code, w.Body.Bytes())
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s: %d with Content-Type %q", method, target, w.Code, ct)
	}
	if w.Code != http.StatusOK {
		var e server.ErrorResponse
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" || e.Code == "" {
			t.Fatalf("%s %s: %d with body %q, not an ErrorResponse", method, target, w.Code, w.Body.Bytes())
		}
	}
	return w.Code, w.Body.Bytes()
}

// postOne posts body to path and checks what reached the store: a refused
// request wrote nothing; an answered one wrote exactly one record, counted
// by kind. It returns the answer's body and whether it was a 200.
func (a *api) postOne(t *testing.T, path, authz string, body []byte, kind *int) ([]byte, bool) {
	t.Helper()
	before, kinds := a.st.writes(), *kind
	code, out := a.do(t, http.MethodPost, path, "", authz, body)
	if code != http.StatusOK {
		if a.st.writes() != before {
			t.Fatalf("refused with %d (%s) but wrote to the store", code, out)
		}
		return out, false
	}
	if *kind != kinds+1 || a.st.writes() != before+1 {
		t.Fatalf("one record answered, %d writes made (%d of this kind)", a.st.writes()-before, *kind-kinds)
	}
	return out, true
}

// decodeLikeServer decodes body as the server does: the first JSON value,
// unknown fields refused.
func decodeLikeServer(body []byte, dst any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	return dec.Decode(dst)
}

func fuzzCSR(tb testing.TB, id spiffeid.ID) string { return string(csrFor(tb, newKey(tb), id)) }

func jsonOf(tb testing.TB, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// FuzzSign posts arbitrary bodies and Authorization headers to /v1/sign:
// malformed input gets a 4xx JSON error and leaves no issuance record; a
// 200 comes only for the workload's bearer token, records exactly one
// issuance, and carries a chain whose leaf names the token's identity and
// nothing else.
func FuzzSign(f *testing.F) {
	a := newAPI(f)
	good := fuzzCSR(f, fooID)
	bearer := "Bearer " + fooToken
	f.Add(jsonOf(f, server.SignRequest{CSR: good}), bearer)
	f.Add(jsonOf(f, server.SignRequest{CSR: good, TTL: "1h"}), bearer)
	f.Add(jsonOf(f, server.SignRequest{CSR: good, TTL: "-1h"}), bearer)
	f.Add(jsonOf(f, server.SignRequest{CSR: good, TTL: "87600h"}), bearer)
	f.Add(jsonOf(f, server.SignRequest{CSR: fuzzCSR(f, otherID)}), bearer)
	f.Add(jsonOf(f, server.SignRequest{CSR: good}), "Bearer nope")
	f.Add(jsonOf(f, server.SignRequest{CSR: good}), "")
	f.Add([]byte(`{"csr":"x","tll":"1h"}`), bearer)
	f.Add([]byte(`{"csr":"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"}`), bearer)
	f.Add([]byte(`{"csr":1}{}`), "bearer  "+fooToken+" ")
	f.Add([]byte(`null`), bearer)
	f.Fuzz(func(t *testing.T, body []byte, authz string) {
		out, ok := a.postOne(t, "/v1/sign", authz, body, &a.st.issuances)
		if !ok {
			return
		}
		if fields := strings.Fields(authz); len(fields) != 2 || !strings.EqualFold(fields[0], "Bearer") || fields[1] != fooToken {
			t.Fatalf("signed for Authorization %q", authz)
		}
		var resp server.SignResponse
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		chain := parseChain(t, resp.CertChain)
		if resp.SPIFFEID != fooID.String() || len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != fooID.String() ||
			len(chain[0].DNSNames)+len(chain[0].IPAddresses)+len(chain[0].EmailAddresses) != 0 || chain[0].IsCA {
			t.Fatalf("signed %s with SANs %v %v %v %v, IsCA %v", resp.SPIFFEID, chain[0].URIs, chain[0].DNSNames, chain[0].IPAddresses, chain[0].EmailAddresses, chain[0].IsCA)
		}
	})
}

// FuzzAdminJoinTokens posts arbitrary bodies to /v1/admin/join-tokens: a
// 4xx stores nothing; a 200 needs the admin token, stores exactly one
// token, for exactly the SPIFFE ID asked, in the trust domain, expiring
// within jointoken.MaxTTL.
func FuzzAdminJoinTokens(f *testing.F) {
	a := newAPI(f)
	admin := "Bearer " + adminToken
	vm := "spiffe://example.org/vm/web-1"
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: vm}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: vm, TTL: "10m"}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: vm, TTL: "-10m"}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: vm, TTL: "9000h"}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: "spiffe://evil.org/vm/1"}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: "web-1"}), admin)
	f.Add(jsonOf(f, server.JoinTokenRequest{SPIFFEID: vm}), "Bearer "+fooToken)
	f.Add([]byte(`{"spiffe_id":"spiffe://example.org/a","tl":"1h"}`), admin)
	f.Fuzz(func(t *testing.T, body []byte, authz string) {
		out, ok := a.postOne(t, "/v1/admin/join-tokens", authz, body, &a.st.tokens)
		if !ok {
			return
		}
		if !strings.Contains(authz, adminToken) {
			t.Fatalf("join token created for Authorization %q", authz)
		}
		var req server.JoinTokenRequest
		var resp server.JoinTokenResponse
		if err := decodeLikeServer(body, &req); err != nil {
			t.Fatalf("accepted a body that does not decode: %v", err)
		}
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		id, err := spiffeid.FromString(resp.SPIFFEID)
		if err != nil || resp.SPIFFEID != req.SPIFFEID || id.TrustDomain() != td || resp.Token == "" {
			t.Fatalf("asked for %q, got a token for %q (%v)", req.SPIFFEID, resp.SPIFFEID, err)
		}
		if now := a.clk.Now(); !resp.ExpiresAt.After(now) || resp.ExpiresAt.After(now.Add(jointoken.MaxTTL)) {
			t.Fatalf("token expires at %v, now %v", resp.ExpiresAt, now)
		}
	})
}

// FuzzAdminRevocations posts arbitrary bodies to /v1/admin/revocations: a
// 4xx stores nothing; a 200 needs the admin token and stores exactly one
// entry, for exactly one of a serial and a SPIFFE ID.
func FuzzAdminRevocations(f *testing.F) {
	a := newAPI(f)
	admin := "Bearer " + adminToken
	f.Add(jsonOf(f, server.RevokeRequest{Serial: "0A:ff", Reason: "key compromise"}), admin)
	f.Add(jsonOf(f, server.RevokeRequest{SPIFFEID: fooID.String()}), admin)
	f.Add(jsonOf(f, server.RevokeRequest{SPIFFEID: fooID.String(), Serial: "1"}), admin)
	f.Add(jsonOf(f, server.RevokeRequest{Serial: "-1"}), admin)
	f.Add(jsonOf(f, server.RevokeRequest{SPIFFEID: "spiffe://example.org/a/../b"}), admin)
	f.Add(jsonOf(f, server.RevokeRequest{Serial: "ff"}), "Bearer "+fooToken)
	f.Add([]byte(`{}`), admin)
	f.Fuzz(func(t *testing.T, body []byte, authz string) {
		_, ok := a.postOne(t, "/v1/admin/revocations", authz, body, &a.st.revocations)
		if !ok {
			return
		}
		if !strings.Contains(authz, adminToken) {
			t.Fatalf("revoked for Authorization %q", authz)
		}
		var req server.RevokeRequest
		if err := decodeLikeServer(body, &req); err != nil {
			t.Fatalf("accepted a body that does not decode: %v", err)
		}
		if (req.Serial == "") == (req.SPIFFEID == "") {
			t.Fatalf("accepted %+v", req)
		}
	})
}

// FuzzAdminIssuances lists the issuance log with an arbitrary query
// string: a bad spiffe_id or since is a 400, never a 5xx, and a 200 lists
// exactly the records of the named identity (all of them: every record is
// issued at the fake now, so any positive since covers it), never another
// identity's. Listing writes nothing.
func FuzzAdminIssuances(f *testing.F) {
	a := newAPI(f)
	want := map[string]int{fooID.String(): 2, otherID.String(): 1}
	for id, n := range want {
		for range n {
			sid := spiffeid.RequireFromString(id)
			if _, err := a.auth.Sign(context.Background(), ca.SignRequest{CSR: []byte(fuzzCSR(f, sid)), Identity: attestor.Identity{ID: sid, Kind: "test"}}); err != nil {
				f.Fatal(err)
			}
		}
	}
	admin := "Bearer " + adminToken
	f.Add("", admin)
	f.Add("spiffe_id="+url.QueryEscape(fooID.String()), admin)
	f.Add("spiffe_id="+url.QueryEscape(otherID.String())+"&since=1h", admin)
	f.Add("spiffe_id=spiffe%3A%2F%2Fexample.org%2Fns%2Ffoo%2Fsa%2Fbar%2F", admin)
	f.Add("spiffe_id=spiffe://EXAMPLE.org/ns/foo/sa/bar", admin)
	f.Add("since=-1h", admin)
	f.Add("since=1ns&spiffe_id=;", admin)
	f.Add("", "Bearer "+fooToken)
	f.Fuzz(func(t *testing.T, rawQuery, authz string) {
		before := a.st.writes()
		code, out := a.do(t, http.MethodGet, "/v1/admin/issuances", rawQuery, authz, nil)
		if a.st.writes() != before {
			t.Fatalf("listing wrote to the store")
		}
		if code != http.StatusOK {
			return
		}
		if !strings.Contains(authz, adminToken) {
			t.Fatalf("listed for Authorization %q", authz)
		}
		q, _ := url.ParseQuery(rawQuery)
		id := q.Get("spiffe_id")
		var resp server.IssuancesResponse
		if err := json.Unmarshal(out, &resp); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, k := range want {
			n += k
		}
		if id != "" {
			n = want[id]
		}
		if len(resp.Issuances) != n {
			t.Fatalf("filter %q listed %d records, want %d", rawQuery, len(resp.Issuances), n)
		}
		for _, r := range resp.Issuances {
			if id != "" && r.SPIFFEID != id {
				t.Fatalf("filter spiffe_id=%q listed a record of %q", id, r.SPIFFEID)
			}
		}
	})
}

// FuzzCreateCertificate calls the Istio CSR API (gRPC CreateCertificate)
// with an arbitrary CSR, validity_duration and authorization metadata (one
// value a line): client input is refused with InvalidArgument,
// Unauthenticated, PermissionDenied or ResourceExhausted, never an internal error, and leaves
// no issuance record; a certificate comes only for exactly one
// "Bearer <workload token>" value, is recorded once, and names that
// token's identity alone.
func FuzzCreateCertificate(f *testing.F) {
	a := newAPI(f)
	good := fuzzCSR(f, fooID)
	bearer := "Bearer " + fooToken
	f.Add(good, int64(0), bearer)
	f.Add(good, int64(3600), bearer)
	f.Add(good, int64(-1), bearer)
	f.Add(good, int64(1<<62), bearer)
	f.Add(good, int64(0), bearer+"\n"+bearer)
	f.Add(good, int64(0), "")
	f.Add(fuzzCSR(f, otherID), int64(0), bearer)
	f.Add("-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n", int64(60), "bearer "+fooToken)
	f.Fuzz(func(t *testing.T, csr string, validity int64, authz string) {
		md := metadata.MD{}
		if authz != "" {
			md["authorization"] = strings.Split(authz, "\n")
		}
		ctx := metadata.NewIncomingContext(context.Background(), md)
		before := a.st.writes()
		resp, err := a.srv.CreateCertificate(ctx, &pb.IstioCertificateRequest{Csr: csr, ValidityDuration: validity})
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.Unauthenticated, codes.PermissionDenied, codes.ResourceExhausted:
			default:
				t.Fatalf("CreateCertificate: %v for client input", err)
			}
			if a.st.writes() != before {
				t.Fatalf("refused (%v) but wrote to the store", err)
			}
			return
		}
		if a.st.issuances != before+1 || a.st.writes() != before+1 {
			t.Fatalf("one certificate answered, %d writes made", a.st.writes()-before)
		}
		if fields := strings.Fields(authz); len(md["authorization"]) != 1 || len(fields) != 2 || !strings.EqualFold(fields[0], "Bearer") || fields[1] != fooToken {
			t.Fatalf("signed for authorization %q", md["authorization"])
		}
		chain := parseChain(t, resp.GetCertChain())
		if len(chain[0].URIs) != 1 || chain[0].URIs[0].String() != fooID.String() || chain[0].IsCA ||
			len(chain[0].DNSNames)+len(chain[0].IPAddresses)+len(chain[0].EmailAddresses) != 0 {
			t.Fatalf("signed a leaf with URIs %v, IsCA %v", chain[0].URIs, chain[0].IsCA)
		}
	})
}
