package boltstore_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meshca/meshca/ca/store"
)

func TestCAState(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	if _, err := s.LoadCAState(ctx); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("LoadCAState on an empty store: got %v, want ErrNotFound", err)
	}
	key := func(b byte) *store.CAKey {
		return &store.CAKey{CertDER: []byte{b}, Key: store.SealedKey{Alg: "aes-256-gcm", KeyID: "k1", Nonce: []byte{1, 2}, Data: []byte{b, b}}}
	}
	// The steps run in order against the same store.
	steps := []struct {
		name        string
		st          store.CAState
		wantVersion uint64 // 0: ErrConflict
	}{
		{"first save", store.CAState{Version: 0, Root: key(1)}, 1},
		{"stale create", store.CAState{Version: 0, Root: key(9)}, 0},
		{"update", store.CAState{Version: 1, Root: key(1), Active: key(2)}, 2},
		{"stale update", store.CAState{Version: 1, Root: key(1), Active: key(9)}, 0},
		{"version from the future", store.CAState{Version: 7, Root: key(9)}, 0},
		{"rotation", store.CAState{Version: 2, Root: key(1), Active: key(2), Next: key(3)}, 3},
	}
	want := store.CAState{}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			in := step.st
			v, err := s.SaveCAState(ctx, &in)
			if step.wantVersion == 0 {
				if !errors.Is(err, store.ErrConflict) {
					t.Fatalf("SaveCAState: got (%d, %v), want ErrConflict", v, err)
				}
				if !strings.HasPrefix(err.Error(), "boltstore: ") {
					t.Errorf("error %q lacks the package prefix", err)
				}
			} else {
				if err != nil || v != step.wantVersion {
					t.Fatalf("SaveCAState: got (%d, %v), want (%d, nil)", v, err, step.wantVersion)
				}
				want = step.st
				want.Version = v
			}
			if in.Version != step.st.Version {
				t.Errorf("SaveCAState changed its argument's version to %d", in.Version)
			}
			got, err := s.LoadCAState(ctx)
			if err != nil {
				t.Fatalf("LoadCAState: %v", err)
			}
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("LoadCAState: got %+v, want %+v", *got, want)
			}
		})
	}
}

func TestCAStateConcurrentSaves(t *testing.T) {
	ctx := context.Background()
	s := open(t, "")
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			_, err := s.SaveCAState(ctx, &store.CAState{})
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, store.ErrConflict):
				t.Errorf("SaveCAState: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d concurrent creations succeeded, want 1", wins.Load())
	}
}
