package adminclient

import (
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/testca"
)

func TestNewServerName(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bundle.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: testca.New(t).Root.Raw}), 0o644)
	os.WriteFile(filepath.Join(dir, "admin-token"), []byte("tok\n"), 0o600)
	tests := []struct {
		addr, wantName, wantErr string
	}{
		{addr: "127.0.0.1:8443", wantName: "localhost"},
		{addr: "[::1]:8443", wantName: "localhost"},
		{addr: ":8443", wantName: "localhost"},
		{addr: "meshca.example:8443", wantName: "meshca.example"},
		{addr: "[2001:db8::1]:8443", wantName: "2001:db8::1"},
		{addr: "meshca.example", wantName: "meshca.example"},
		{addr: "[::1]", wantName: "localhost"},
		{addr: "a:b:c", wantErr: "too many colons"},
	}
	for _, tc := range tests {
		t.Run(tc.addr, func(t *testing.T) {
			c, err := New(Config{Addr: tc.addr, DataDir: dir})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.token != "tok" || c.base != "https://"+tc.addr {
				t.Errorf("token %q base %q", c.token, c.base)
			}
			if got := c.http.Transport.(*http.Transport).TLSClientConfig.ServerName; got != tc.wantName {
				t.Errorf("server name %q, want %q", got, tc.wantName)
			}
		})
	}
}
