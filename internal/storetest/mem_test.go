package storetest_test

import (
	"testing"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/internal/storetest"
)

func TestMem(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s := storetest.NewMem()
		t.Cleanup(func() { s.Close() })
		return s
	})
}
