package server_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/server"
)

var update = flag.Bool("update", false, "rewrite golden files")

// TestAdminRotationAPI: the rotation endpoints do what they say for the
// admin token, and refuse bad input with a clear message and status.
func TestAdminRotationAPI(t *testing.T) {
	a := newAPI(t)
	admin := "Bearer " + adminToken
	tests := []struct {
		name, method, path, authz, body string
		wantCode                        int
		wantBody                        string
	}{
		{"status without a token", http.MethodGet, "/v1/admin/ca", "", "", http.StatusUnauthorized, "missing or wrong admin token"},
		{"rotation with a wrong token", http.MethodPost, "/v1/admin/root-rotation", "Bearer nope", `{"action":"start"}`, http.StatusUnauthorized, "missing or wrong admin token"},
		{"status", http.MethodGet, "/v1/admin/ca", admin, "", http.StatusOK, `"mode":"intermediate"`},
		{"unknown action", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"restart"}`, http.StatusBadRequest, `action must be start, advance or abort, not \"restart\"`},
		{"no action", http.MethodPost, "/v1/admin/root-rotation", admin, `{}`, http.StatusBadRequest, "action must be"},
		{"unknown field", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"start","force":true}`, http.StatusBadRequest, `unknown field \"force\"`},
		{"advance with none in progress", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"advance","phase":"prepared"}`, http.StatusConflict, "no root rotation is in progress"},
		{"start", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"start"}`, http.StatusOK, `"phase":"prepared"`},
		{"start again", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"start"}`, http.StatusOK, "already prepared"},
		{"advance from the wrong phase", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"advance","phase":"switched"}`, http.StatusConflict, "in phase prepared, not switched"},
		{"advance without a phase", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"advance"}`, http.StatusConflict, "advance needs the phase to leave"},
		{"advance", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"advance","phase":"prepared"}`, http.StatusOK, `"phase":"switched"`},
		{"abort after the switch", http.MethodPost, "/v1/admin/root-rotation", admin, `{"action":"abort"}`, http.StatusConflict, "can no longer be aborted"},
		{"emergency without now", http.MethodPost, "/v1/admin/intermediate-rotation", admin, `{}`, http.StatusBadRequest, `needs \"now\": true`},
		{"emergency without a token", http.MethodPost, "/v1/admin/intermediate-rotation", "", `{"now":true}`, http.StatusUnauthorized, "admin token"},
		{"emergency", http.MethodPost, "/v1/admin/intermediate-rotation", admin, `{"now":true,"reason":"key compromise"}`, http.StatusOK, `"state":"revoked"`},
		{"status after", http.MethodGet, "/v1/admin/ca", admin, "", http.StatusOK, `"reason":"key compromise"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, out := a.do(t, tc.method, tc.path, "", tc.authz, []byte(tc.body))
			if code != tc.wantCode || !strings.Contains(string(out), tc.wantBody) {
				t.Errorf("%s %s %s: %d %s, want %d with %s", tc.method, tc.path, tc.body, code, out, tc.wantCode, tc.wantBody)
			}
		})
	}
}

// TestAdminCAStatusGolden pins the JSON shape of GET /v1/admin/ca, a
// contract documented in docs/configuration.md: during a switched root
// rotation, after an emergency intermediate rotation. Values that change
// from run to run (fingerprints, serials, subjects' serial numbers) are
// replaced by placeholders. Run with -update to rewrite it.
func TestAdminCAStatusGolden(t *testing.T) {
	a := newAPI(t)
	admin := "Bearer " + adminToken
	for _, body := range []string{`{"action":"start"}`, `{"action":"advance","phase":"prepared"}`} {
		if code, out := a.do(t, http.MethodPost, "/v1/admin/root-rotation", "", admin, []byte(body)); code != http.StatusOK {
			t.Fatalf("%s: %d %s", body, code, out)
		}
	}
	if _, _, err := a.auth.RotateIntermediateNow(t.Context(), "key compromise"); err != nil {
		t.Fatal(err)
	}
	a.clk.Advance(time.Hour)
	code, out := a.do(t, http.MethodGet, "/v1/admin/ca", "", admin, nil)
	if code != http.StatusOK {
		t.Fatalf("status: %d %s", code, out)
	}
	var st ca.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatal(err)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, out, "", "  "); err != nil {
		t.Fatal(err)
	}
	got := regexp.MustCompile(`"[0-9a-f]{64}"`).ReplaceAll(pretty.Bytes(), []byte(`"<sha256>"`))
	got = regexp.MustCompile(`("serial": )"[0-9a-f]+"`).ReplaceAll(got, []byte(`$1"<serial>"`))
	got = regexp.MustCompile(`SERIALNUMBER=[0-9a-f]+`).ReplaceAll(got, []byte(`SERIALNUMBER=<serial>`))
	got = regexp.MustCompile(`("kid": )"[A-Za-z0-9_-]+"`).ReplaceAll(got, []byte(`$1"<kid>"`))
	golden := filepath.Join("testdata", "ca-status.golden.json")
	if *update {
		if err := os.WriteFile(golden, append(got, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if string(want) != string(got)+"\n" {
		t.Errorf("GET /v1/admin/ca changed shape (run with -update if intended):\n%s", got)
	}
}

// FuzzAdminRootRotation posts arbitrary bodies to the rotation endpoints:
// a refusal (4xx) leaves the CA state as it was; a 200 needs the admin
// token and a body that names a known action (or "now": true).
func FuzzAdminRootRotation(f *testing.F) {
	a := newAPI(f)
	admin := "Bearer " + adminToken
	for _, b := range []string{`{"action":"start"}`, `{"action":"advance","phase":"prepared"}`, `{"action":"advance","phase":"switched"}`,
		`{"action":"abort"}`, `{"action":"start","phase":"x"}`, `{"action":"Start"}`, `{"now":true}`, `{"now":false,"reason":"r"}`, `null`, `{}{}`} {
		f.Add([]byte(b), admin, b[2] == 'n')
	}
	f.Add([]byte(`{"action":"start"}`), "Bearer "+fooToken, false)
	f.Fuzz(func(t *testing.T, body []byte, authz string, intermediate bool) {
		path := "/v1/admin/root-rotation"
		if intermediate {
			path = "/v1/admin/intermediate-rotation"
		}
		before, err := a.st.LoadCAState(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		code, out := a.do(t, http.MethodPost, path, "", authz, body)
		after, err := a.st.LoadCAState(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if code != http.StatusOK {
			if after.Version != before.Version {
				t.Fatalf("refused with %d (%s) but changed the CA state", code, out)
			}
			return
		}
		if !strings.Contains(authz, adminToken) {
			t.Fatalf("rotation done for Authorization %q", authz)
		}
		if intermediate {
			var req server.IntermediateRotationRequest
			if err := decodeLikeServer(body, &req); err != nil || !req.Now {
				t.Fatalf("emergency rotation for body %q (%v)", body, err)
			}
			return
		}
		var req server.RootRotationRequest
		if err := decodeLikeServer(body, &req); err != nil {
			t.Fatalf("accepted a body that does not decode: %v", err)
		}
		switch req.Action {
		case ca.RootRotationStart, ca.RootRotationAdvance, ca.RootRotationAbort:
		default:
			t.Fatalf("accepted action %q", req.Action)
		}
	})
}
