package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/attestor/jointoken"
	"github.com/meshca/meshca/ca/server"
)

var vmID = spiffeid.RequireFromPath(td, "/vm/web-1")

// createJoinToken calls the admin API and returns the status and response.
func createJoinToken(t *testing.T, p *plane, auth string, req any) (int, server.JoinTokenResponse, server.ErrorResponse) {
	t.Helper()
	body, _ := json.Marshal(req)
	r, _ := http.NewRequest("POST", "https://"+p.srv.Addr("https").String()+"/v1/admin/join-tokens", bytes.NewReader(body))
	if auth != "" {
		r.Header.Set("Authorization", "Bearer "+auth)
	}
	resp, err := httpsClient(p).Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ok server.JoinTokenResponse
	var bad server.ErrorResponse
	if resp.StatusCode == 200 {
		json.NewDecoder(resp.Body).Decode(&ok)
	} else {
		json.NewDecoder(resp.Body).Decode(&bad)
	}
	return resp.StatusCode, ok, bad
}

func TestJoinTokenIssueUseReplay(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	ctx := context.Background()
	code, jt, _ := createJoinToken(t, p, adminToken, server.JoinTokenRequest{SPIFFEID: vmID.String(), TTL: "1h"})
	if code != 200 || jt.SPIFFEID != vmID.String() || time.Until(jt.ExpiresAt) > time.Hour || len(jt.Token) < 40 {
		t.Fatalf("create = %d %+v", code, jt)
	}
	c := grpcClient(t, p, nil)
	chain, err := c.Sign(ctx, csrFor(t, newKey(t), vmID), 0, jt.Token)
	if err != nil {
		t.Fatalf("first use: %v", err)
	}
	leaf := parseChain(t, chain)[0]
	rec, err := p.store.Issuance(ctx, leaf.SerialNumber.Text(16))
	if err != nil || rec.CredentialKind != jointoken.Kind || rec.SPIFFEID != vmID.String() {
		t.Fatalf("record %+v, %v", rec, err)
	}
	before := len(p.records(t))
	_, err = c.Sign(ctx, csrFor(t, newKey(t), vmID), 0, jt.Token)
	wantCode(t, err, codes.Unauthenticated, "join token already used")
	if len(p.records(t)) != before {
		t.Error("replay was recorded as an issuance")
	}
}

func TestJoinTokenRefusals(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	ctx := context.Background()
	c := grpcClient(t, p, nil)

	expired, _, err := jointoken.Create(ctx, p.store, vmID, time.Hour, time.Now().Add(-2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Sign(ctx, csrFor(t, newKey(t), vmID), 0, expired)
	wantCode(t, err, codes.Unauthenticated, "join token expired at")

	_, err = c.Sign(ctx, csrFor(t, newKey(t), vmID), 0, jointoken.Prefix+"never-issued")
	wantCode(t, err, codes.Unauthenticated, "unknown join token")

	// A token bound to one ID cannot get another.
	other, _, err := jointoken.Create(ctx, p.store, vmID, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Sign(ctx, csrFor(t, newKey(t), fooID), 0, other)
	wantCode(t, err, codes.PermissionDenied, "credential proves "+vmID.String())
	if n := len(p.records(t)); n != 0 {
		t.Fatalf("%d records after refusals", n)
	}
}

func TestAdminAPIRefusals(t *testing.T) {
	p := startPlane(t, filepath.Join(t.TempDir(), "meshca.db"))
	tests := []struct {
		name   string
		auth   string
		req    any
		status int
		msg    string
	}{
		{"no admin token", "", server.JoinTokenRequest{SPIFFEID: vmID.String()}, 401, "admin token"},
		{"wrong admin token", "nope", server.JoinTokenRequest{SPIFFEID: vmID.String()}, 401, "admin token"},
		{"workload token is not admin", fooToken, server.JoinTokenRequest{SPIFFEID: vmID.String()}, 401, "admin token"},
		{"bad SPIFFE ID", adminToken, server.JoinTokenRequest{SPIFFEID: "web-1"}, 400, "spiffe_id"},
		{"other trust domain", adminToken, server.JoinTokenRequest{SPIFFEID: "spiffe://evil.org/vm/1"}, 400, "not in trust domain"},
		{"zero TTL", adminToken, server.JoinTokenRequest{SPIFFEID: vmID.String(), TTL: "0s"}, 400, "must be positive"},
		{"TTL over a month", adminToken, server.JoinTokenRequest{SPIFFEID: vmID.String(), TTL: "9000h"}, 400, "at most"},
		{"unknown field", adminToken, map[string]string{"spiffe_id": vmID.String(), "tl": "1h"}, 400, "unknown field"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, _, e := createJoinToken(t, p, tc.auth, tc.req)
			if code != tc.status || !strings.Contains(e.Error, tc.msg) {
				t.Fatalf("got %d %q, want %d saying %q", code, e.Error, tc.status, tc.msg)
			}
		})
	}
}
