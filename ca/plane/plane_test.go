package plane

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/ca/store/boltstore"
)

// TestKEKRefusesClearKeysAtStart: a data file holding CA keys in clear is
// refused by a plane with a KEK (they could have been planted by whoever can
// write the file) until Seal, the explicit step, seals them; then the same
// root starts with the KEK.
func TestKEKRefusesClearKeysAtStart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kek := bytes.Repeat([]byte{9}, 32)
	cfg := Config{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), DataDir: dir}
	start := func(kek []byte) (*Plane, error) {
		c := cfg
		c.KEK = kek
		return Start(ctx, c)
	}
	algs := func() []string {
		st, err := boltstore.Open(filepath.Join(dir, DataFile), boltstore.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		s, err := st.LoadCAState(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return []string{s.Root.Key.Alg, s.Active.Key.Alg}
	}
	p, err := start(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Authority().RootsPEM()
	p.Stop()
	if _, err := start(kek); !errors.Is(err, ca.ErrClearKey) {
		t.Fatalf("start with a KEK over clear keys = %v, want ca.ErrClearKey", err)
	}
	if got := algs(); !slices.Equal(got, []string{"none", "none"}) {
		t.Fatalf("a refused start changed the keys: %v", got)
	}
	sealCfg := cfg
	sealCfg.KEK = kek
	if n, where, err := Seal(ctx, sealCfg); err != nil || n != 3 || where != filepath.Join(dir, DataFile) {
		t.Fatalf("Seal = %d, %q, %v", n, where, err)
	}
	if got := algs(); !slices.Equal(got, []string{"aes-256-gcm", "aes-256-gcm"}) {
		t.Fatalf("after Seal keys are %v", got)
	}
	p, err = start(kek)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	if !bytes.Equal(before, p.Authority().RootsPEM()) {
		t.Fatal("the root changed when the keys were sealed")
	}
	if _, _, err := Seal(ctx, sealCfg); err == nil {
		t.Fatal("Seal while the plane runs succeeded: the data file must be locked")
	}
}
