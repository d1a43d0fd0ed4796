package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
)

// Answer returns an IssuedRequest for request answered by the record of
// serial, with a chain of two made-up PEM blocks.
func Answer(request, serial string) store.IssuedRequest {
	return store.IssuedRequest{Request: request, Serial: serial, ChainPEM: []string{
		"-----BEGIN CERTIFICATE-----\nleaf " + serial + "\n-----END CERTIFICATE-----\n",
		"-----BEGIN CERTIFICATE-----\nintermediate\n-----END CERTIFICATE-----\n",
	}}
}

// testIssuedRequests: RecordIssuanceOnce records the issuance (found and
// listed as any other) and the answer; a request answered already is
// ErrConflict and records neither; a bad answer or record records neither.
func testIssuedRequests(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	rec, ans := Issuance("0a", idA, 1, 2), Answer("pcr/1", "0a")
	if err := s.RecordIssuanceOnce(ctx, rec, ans); err != nil {
		t.Fatalf("RecordIssuanceOnce: %v", err)
	}
	got, err := s.IssuedRequest(ctx, "pcr/1")
	if err != nil || !reflect.DeepEqual(*got, ans) {
		t.Fatalf("IssuedRequest: got (%+v, %v), want %+v", got, err, ans)
	}
	got.ChainPEM[0] = "changed"
	if again, _ := s.IssuedRequest(ctx, "pcr/1"); again == nil || !reflect.DeepEqual(*again, ans) {
		t.Errorf("changing a returned answer changed the stored one: %+v", again)
	}
	if r, err := s.Issuance(ctx, "0a"); err != nil || !reflect.DeepEqual(*r, rec) {
		t.Errorf("Issuance of the record: (%+v, %v), want %+v", r, err, rec)
	}
	if all, err := s.Issuances(ctx, store.IssuanceFilter{SPIFFEID: idA}); err != nil || !reflect.DeepEqual(serials(all), []string{"0a"}) {
		t.Errorf("Issuances: (%v, %v), want [0a]", serials(all), err)
	}
	if _, err := s.IssuedRequest(ctx, "pcr/2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("IssuedRequest of an unknown request: got %v, want ErrNotFound", err)
	}

	tests := []struct {
		name     string
		modify   func(*store.Issuance, *store.IssuedRequest)
		conflict bool
	}{
		{"request answered already", func(_ *store.Issuance, a *store.IssuedRequest) { a.Request = "pcr/1" }, true},
		{"the same record and answer again", func(r *store.Issuance, a *store.IssuedRequest) { *r, *a = rec, ans }, true},
		{"duplicate serial", func(r *store.Issuance, a *store.IssuedRequest) { r.Serial, a.Serial = "0a", "0a" }, false},
		{"serial not the record's", func(_ *store.Issuance, a *store.IssuedRequest) { a.Serial = "0c" }, false},
		{"missing request key", func(_ *store.Issuance, a *store.IssuedRequest) { a.Request = "" }, false},
		{"request key too long", func(_ *store.Issuance, a *store.IssuedRequest) {
			a.Request = strings.Repeat("k", store.MaxRequestKeyLen+1)
		}, false},
		{"NUL in the request key", func(_ *store.Issuance, a *store.IssuedRequest) { a.Request = "pcr\x00/2" }, false},
		{"no chain", func(_ *store.Issuance, a *store.IssuedRequest) { a.ChainPEM = nil }, false},
		{"empty chain", func(_ *store.Issuance, a *store.IssuedRequest) { a.ChainPEM = []string{""} }, false},
		{"chain too long", func(_ *store.Issuance, a *store.IssuedRequest) {
			a.ChainPEM = []string{strings.Repeat("x", store.MaxChainLen+1)}
		}, false},
		{"missing SPIFFE ID", func(r *store.Issuance, _ *store.IssuedRequest) { r.SPIFFEID = "" }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, a := Issuance("0b", idB, 3, 4), Answer("pcr/2", "0b")
			tt.modify(&r, &a)
			err := s.RecordIssuanceOnce(ctx, r, a)
			if err == nil || errors.Is(err, store.ErrConflict) != tt.conflict {
				t.Fatalf("RecordIssuanceOnce: got %v, want an error (ErrConflict: %t)", err, tt.conflict)
			}
			if all, err := s.Issuances(ctx, store.IssuanceFilter{}); err != nil || !reflect.DeepEqual(serials(all), []string{"0a"}) {
				t.Errorf("records after a failed RecordIssuanceOnce: (%v, %v), want [0a]", serials(all), err)
			}
			if _, err := s.IssuedRequest(ctx, "pcr/2"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("answer recorded by a failed RecordIssuanceOnce: %v", err)
			}
			if got, _ := s.IssuedRequest(ctx, "pcr/1"); got == nil || !reflect.DeepEqual(*got, ans) {
				t.Errorf("answer to pcr/1 = %+v, want the first one written", got)
			}
		})
	}
}

// testIssuedRequestAnsweredOnce: many writers answer one request at once;
// exactly one succeeds, the others get ErrConflict, and only the winner's
// record is kept.
func testIssuedRequestAnsweredOnce(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	const writers = 16
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			serial := fmt.Sprintf("%02x", i+1)
			errs[i] = s.RecordIssuanceOnce(ctx, Issuance(serial, idA, 1, 2), Answer("pcr/race", serial))
		})
	}
	wg.Wait()
	winner := ""
	for i, err := range errs {
		switch {
		case err == nil && winner == "":
			winner = fmt.Sprintf("%02x", i+1)
		case err == nil:
			t.Errorf("writer %d also succeeded after %s", i+1, winner)
		case !errors.Is(err, store.ErrConflict):
			t.Errorf("writer %d: %v, want ErrConflict", i+1, err)
		}
	}
	if winner == "" {
		t.Fatal("no writer succeeded")
	}
	if got, err := s.IssuedRequest(ctx, "pcr/race"); err != nil || got.Serial != winner {
		t.Errorf("answer: (%+v, %v), want serial %s", got, err, winner)
	}
	if all, err := s.Issuances(ctx, store.IssuanceFilter{}); err != nil || !reflect.DeepEqual(serials(all), []string{winner}) {
		t.Errorf("records: (%v, %v), want [%s]", serials(all), err, winner)
	}
}

// testPruneIssuedRequests: an answer goes with its issuance record, and
// only then.
func testPruneIssuedRequests(t *testing.T, open func(*testing.T) store.Store) {
	ctx := context.Background()
	s := open(t)
	record(t, s, Issuance("01", idA, 0, 1))
	for _, r := range []struct {
		serial  string
		expires int
	}{{"02", 2}, {"03", 5}} {
		if err := s.RecordIssuanceOnce(ctx, Issuance(r.serial, idB, 0, r.expires), Answer("pcr/"+r.serial, r.serial)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PruneIssuances(ctx, t0.Add(3*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("PruneIssuances: (%d, %v), want 2 records", n, err)
	}
	if _, err := s.IssuedRequest(ctx, "pcr/02"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("answer of a pruned record: %v, want ErrNotFound", err)
	}
	if got, err := s.IssuedRequest(ctx, "pcr/03"); err != nil || got.Serial != "03" {
		t.Errorf("answer of a kept record: (%+v, %v)", got, err)
	}
	// The key of a pruned answer may be used again (it never is: request
	// UIDs are unique, but nothing of the old one is left).
	if err := s.RecordIssuanceOnce(ctx, Issuance("04", idB, 4, 6), Answer("pcr/02", "04")); err != nil {
		t.Errorf("answering a pruned request key again: %v", err)
	}
}
