package load

import (
	"slices"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestPercentile(t *testing.T) {
	var lat []time.Duration
	for i := 100; i >= 1; i-- {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		name string
		lat  []time.Duration
		p    float64
		want time.Duration
	}{
		{"median", lat, 50, 50 * time.Millisecond},
		{"p99", lat, 99, 99 * time.Millisecond},
		{"max", lat, 100, 100 * time.Millisecond},
		{"one", lat[:1], 99, 100 * time.Millisecond},
		{"none", nil, 99, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(tc.lat, tc.p); got != tc.want {
				t.Fatalf("Percentile(%v) = %v, want %v", tc.p, got, tc.want)
			}
		})
	}
}

func TestRetryHint(t *testing.T) {
	withInfo, err := status.New(codes.ResourceExhausted, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(250 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	plain := status.New(codes.Unavailable, "busy")
	for _, tc := range []struct {
		name    string
		st      *status.Status
		trailer metadata.MD
		want    time.Duration
		ok      bool
	}{
		{"RetryInfo", withInfo, nil, 250 * time.Millisecond, true},
		{"RetryInfo wins over the trailer", withInfo, metadata.Pairs(PushbackTrailer, "900"), 250 * time.Millisecond, true},
		{"pushback trailer", plain, metadata.Pairs(PushbackTrailer, "40"), 40 * time.Millisecond, true},
		{"malformed trailer", plain, metadata.Pairs(PushbackTrailer, "soon"), 0, false},
		{"no hint", plain, nil, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := retryHint(tc.st, tc.trailer)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("retryHint = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestWaits(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  time.Duration
		want time.Duration
	}{
		{"first backoff, no jitter drawn low", backoff(0, time.Second, time.Minute, 0.5), time.Second},
		{"doubles", backoff(3, time.Second, time.Minute, 0.5), 8 * time.Second},
		{"capped", backoff(30, time.Second, time.Minute, 0.5), time.Minute},
		{"jitter -20 %", backoff(0, time.Second, time.Minute, 0), 800 * time.Millisecond},
		{"hint kept", hintWait(4*time.Second, time.Second, 0), 4 * time.Second},
		{"hint jitter at most a second", hintWait(4*time.Second, time.Second, 0.999999999), 4*time.Second + 999999999},
		{"hint jitter at most half the hint", hintWait(1200*time.Millisecond, time.Second, 0.5), 1500 * time.Millisecond},
		{"short hint raised to the minimum", hintWait(100*time.Millisecond, time.Second, 0.5), time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Fatalf("got %v, want %v", tc.got, tc.want)
			}
		})
	}
}

// TestAdmitted: the admitted latencies are both groups, the first
// attempts' and the retries', in a slice of their own: sorting it leaves
// the groups as they were.
func TestAdmitted(t *testing.T) {
	r := StormResult{FirstTry: append(make([]time.Duration, 0, 4), 3, 1), AfterShed: []time.Duration{2}}
	got := r.Admitted()
	if !slices.Equal(got, []time.Duration{3, 1, 2}) {
		t.Fatalf("Admitted() = %v", got)
	}
	slices.Sort(got)
	if !slices.Equal(r.FirstTry, []time.Duration{3, 1}) || !slices.Equal(r.AfterShed, []time.Duration{2}) {
		t.Fatalf("sorting the admitted latencies changed the groups: %v %v", r.FirstTry, r.AfterShed)
	}
}
