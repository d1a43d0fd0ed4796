package audit

import (
	"os"
	"path/filepath"
	"testing"
)

func TestUnixTarget(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, socket, want string
	}{
		{"relative, as README shows", ".meshca/sockets/sds.sock", "unix://" + filepath.Join(wd, ".meshca/sockets/sds.sock")},
		{"absolute", "/run/meshca/sds.sock", "unix:///run/meshca/sds.sock"},
		{"cleaned", "/run//meshca/../meshca/sds.sock", "unix:///run/meshca/sds.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := unixTarget(tc.socket)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("unixTarget(%q) = %q, want %q", tc.socket, got, tc.want)
			}
		})
	}
}
