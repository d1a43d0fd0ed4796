package plane

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca/store/boltstore"
)

// TestKEKAddedLaterSealsAtStart starts a plane without a KEK, then with one:
// the second start seals the keys stored in clear, as an explicit step of
// start-up, and the root stays the same.
func TestKEKAddedLaterSealsAtStart(t *testing.T) {
	dir := t.TempDir()
	cfg := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: dir}
	start := func(kek []byte) []byte {
		c := cfg
		c.KEK = kek
		p, err := Start(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		roots := p.Authority().RootsPEM()
		if err := p.Stop(); err != nil {
			t.Fatal(err)
		}
		return roots
	}
	algs := func() []string {
		st, err := boltstore.Open(filepath.Join(dir, DataFile), boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		s, err := st.LoadCAState(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return []string{s.Root.Key.Alg, s.Active.Key.Alg}
	}
	clear := start(nil)
	if got := algs(); !slices.Equal(got, []string{"none", "none"}) {
		t.Fatalf("without a KEK keys are %v", got)
	}
	if sealed := start(bytes.Repeat([]byte{9}, 32)); !bytes.Equal(clear, sealed) {
		t.Fatal("the root changed when the KEK was added")
	}
	if got := algs(); !slices.Equal(got, []string{"aes-256-gcm", "aes-256-gcm"}) {
		t.Fatalf("after a start with a KEK keys are %v", got)
	}
}
