package pgstore_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca/store"
	"github.com/meshca/meshca/ca/store/pgstore"
	"github.com/meshca/meshca/internal/pgenv"
	"github.com/meshca/meshca/internal/storetest"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const idA = "spiffe://example.org/a"

// replicas opens two stores on one new database, as two replicas would.
func replicas(t *testing.T) (a, b *pgstore.Store) {
	t.Helper()
	dsn := pgenv.Get(t).NewDatabase(t)
	return open(t, dsn, pgstore.Options{Replica: "a"}), open(t, dsn, pgstore.Options{Replica: "b"})
}

// tokenHash is a join token hash, 64 hex digits, from n.
func tokenHash(n int) string { return fmt.Sprintf("%064x", n) }

func TestJoinTokenAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	a, b := replicas(t)
	tok := store.JoinToken{Hash: tokenHash(1), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}
	if err := a.CreateJoinToken(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateJoinToken(ctx, tok); err == nil {
		t.Error("the same token created again on the other replica")
	}
	got, err := b.ConsumeJoinToken(ctx, tok.Hash, t0.Add(time.Minute), "10.0.0.2:1")
	if err != nil || !reflect.DeepEqual(*got, tok) {
		t.Fatalf("consume on b: (%+v, %v), want the token created on a", got, err)
	}
	got, err = a.ConsumeJoinToken(ctx, tok.Hash, t0.Add(2*time.Minute), "10.0.0.1:1")
	if !errors.Is(err, store.ErrJoinTokenUsed) || got == nil || got.UsedBy != "10.0.0.2:1" || !got.UsedAt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("replay on a: (%+v, %v), want ErrJoinTokenUsed with b's use", got, err)
	}
}

// TestJoinTokensRacedAcrossReplicas: 1,000 uses of 100 tokens, ten each,
// half through each replica, all at once: exactly one use of each token
// succeeds, every other is told it is a replay.
func TestJoinTokensRacedAcrossReplicas(t *testing.T) {
	const tokens, usesPerToken = 100, 10
	ctx := context.Background()
	a, b := replicas(t)
	for i := range tokens {
		if err := a.CreateJoinToken(ctx, store.JoinToken{Hash: tokenHash(i), SPIFFEID: idA, CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	var wins [tokens]atomic.Int32
	var replays atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range tokens * usesPerToken {
		s := a
		if i%2 == 1 {
			s = b
		}
		tok := i % tokens
		wg.Go(func() {
			<-start
			_, err := s.ConsumeJoinToken(ctx, tokenHash(tok), t0, fmt.Sprintf("use-%d", i))
			switch {
			case err == nil:
				wins[tok].Add(1)
			case errors.Is(err, store.ErrJoinTokenUsed):
				replays.Add(1)
			default:
				t.Errorf("use %d of token %d: %v", i, tok, err)
			}
		})
	}
	close(start)
	wg.Wait()
	for i := range wins {
		if n := wins[i].Load(); n != 1 {
			t.Errorf("token %d: %d uses succeeded, want 1", i, n)
		}
	}
	if n := replays.Load(); n != tokens*(usesPerToken-1) {
		t.Errorf("%d replays, want %d", n, tokens*(usesPerToken-1))
	}
}

func TestCAStateAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	a, b := replicas(t)
	v, err := a.SaveCAState(ctx, &store.CAState{Active: &store.CAKey{CertDER: []byte{1}}})
	if err != nil || v != 1 {
		t.Fatalf("save on a: (%d, %v)", v, err)
	}
	if _, err := b.SaveCAState(ctx, &store.CAState{Active: &store.CAKey{CertDER: []byte{2}}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("a second first state on b: %v, want ErrConflict", err)
	}
	stB, err := b.LoadCAState(ctx)
	if err != nil || stB.Version != 1 {
		t.Fatalf("load on b: (%+v, %v)", stB, err)
	}
	stA := *stB
	// Both replicas loaded version 1; b writes first, a's write is stale.
	stB.Next = &store.CAKey{CertDER: []byte{3}}
	if v, err := b.SaveCAState(ctx, stB); err != nil || v != 2 {
		t.Fatalf("save on b: (%d, %v)", v, err)
	}
	stA.Next = &store.CAKey{CertDER: []byte{4}}
	if _, err := a.SaveCAState(ctx, &stA); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale save on a: %v, want ErrConflict", err)
	}
	got, err := a.LoadCAState(ctx)
	if err != nil || got.Version != 2 || got.Next == nil || got.Next.CertDER[0] != 3 {
		t.Errorf("load on a: (%+v, %v), want b's version 2", got, err)
	}
}

// TestLogAndDenyListAcrossReplicas: one issuance log and one deny-list,
// whichever replica wrote or reads them.
func TestLogAndDenyListAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	a, b := replicas(t)
	ra, rb := storetest.Issuance("0a", idA, 1, 10), storetest.Issuance("0b", idA, 2, 10)
	if err := a.RecordIssuance(ctx, ra); err != nil {
		t.Fatal(err)
	}
	if err := b.RecordIssuance(ctx, rb); err != nil {
		t.Fatal(err)
	}
	if err := b.RecordIssuance(ctx, ra); err == nil {
		t.Error("b recorded a serial that a recorded")
	}
	rev := store.Revocation{Serial: "0b", RevokedAt: t0.Add(3 * time.Hour), Reason: "key compromise"}
	if err := a.Revoke(ctx, rev); err != nil {
		t.Fatal(err)
	}
	got, err := b.Revocations(ctx, "0b", idA)
	if err != nil || !reflect.DeepEqual(got, []store.Revocation{rev}) {
		t.Errorf("revocations on b: (%+v, %v), want a's", got, err)
	}
	list, err := a.Issuances(ctx, store.IssuanceFilter{SPIFFEID: idA})
	if err != nil || len(list) != 2 || list[0].Serial != "0a" || list[1].Serial != "0b" ||
		!reflect.DeepEqual(list[1].Revocations, []store.Revocation{rev}) || list[0].Revocations != nil {
		t.Errorf("issuances on a: (%+v, %v), want 0a and 0b (revoked)", list, err)
	}
}

// TestMigrationOnce: replicas opening a new database together migrate it
// once, under the advisory lock.
func TestMigrationOnce(t *testing.T) {
	dsn := pgenv.Get(t).NewDatabase(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			s, err := pgstore.Open(context.Background(), dsn, pgstore.Options{})
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		})
	}
	wg.Wait()
	var n, version int
	query(t, dsn, "SELECT count(*), max(version) FROM meshca_schema_migrations", &n, &version)
	if n != pgstore.SchemaVersion() || version != pgstore.SchemaVersion() {
		t.Errorf("%d migrations recorded up to version %d, want %d", n, version, pgstore.SchemaVersion())
	}
}

// TestIssuedRequestRacedAcrossReplicas: 50 requests, each answered at once
// by both replicas with a certificate of their own: exactly one answer per
// request is kept, with its record; the loser's record is rolled back.
func TestIssuedRequestRacedAcrossReplicas(t *testing.T) {
	const requests = 50
	ctx := context.Background()
	a, b := replicas(t)
	var wins, conflicts atomic.Int32
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 * requests {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			serial := fmt.Sprintf("%04x", i+1)
			err := s.RecordIssuanceOnce(ctx, storetest.Issuance(serial, idA, 1, 2), storetest.Answer(fmt.Sprintf("pcr/%d", i/2), serial))
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, store.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("request %d: %v", i/2, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != requests || conflicts.Load() != requests {
		t.Fatalf("%d answers kept and %d refused, want %d each", wins.Load(), conflicts.Load(), requests)
	}
	recs, err := b.Issuances(ctx, store.IssuanceFilter{})
	if err != nil || len(recs) != requests {
		t.Fatalf("%d records (%v), want %d", len(recs), err, requests)
	}
	for i := range requests {
		ans, err := a.IssuedRequest(ctx, fmt.Sprintf("pcr/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Issuance(ctx, ans.Serial); err != nil {
			t.Errorf("request %d answered with serial %s, which has no record: %v", i, ans.Serial, err)
		}
	}
}
