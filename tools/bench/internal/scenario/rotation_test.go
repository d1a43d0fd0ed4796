package scenario

import (
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/load"
)

// storms is a server's rotation storms: done in d seconds each, with
// renewed renewals at cpuPer of server CPU and 50 µs of the load
// generator's each, and an admitted p99 of a tenth of d from the attempt's
// start, a twentieth from the sending.
func storms(name string, renewed int, cpuPer time.Duration, d ...float64) stormSeries {
	s := stormSeries{name: name, cred: "mTLS"}
	for _, v := range d {
		s.runs = append(s.runs, stormRun{
			res: load.StormResult{Renewed: renewed, Failed: map[string]int{}, Done: time.Duration(v * float64(time.Second)), PeakRSS: 100 << 20,
				FirstTry: []time.Duration{time.Duration(v * float64(time.Second) / 10)}, Sent: []time.Duration{time.Duration(v * float64(time.Second) / 20)}},
			cpu: time.Duration(renewed) * cpuPer,
			gen: time.Duration(renewed) * 50 * time.Microsecond,
		})
	}
	return s
}

// TestRotationVersus: the ratio between two servers is the median over
// rounds of the ratio in each round, so a round the whole machine ran slow
// in counts as any other, not as its absolute time.
func TestRotationVersus(t *testing.T) {
	floor := storms("floor", 100, 100*time.Microsecond, 6, 16, 5)
	meshca := storms("meshca", 100, 200*time.Microsecond, 9, 20, 10)
	if got := meshca.versus(floor, stormRun.done); got != 1.5 {
		t.Errorf("time over the floor's %v, want 1.5 (the ratios 1.5, 1.25, 2)", got)
	}
	if got := meshca.versus(floor, stormRun.cpuPerRenewal); got < 1.999 || got > 2.001 {
		t.Errorf("CPU per renewal over the floor's %v, want 2", got)
	}
	if got := floor.versus(floor, stormRun.p99); got != 1 {
		t.Errorf("the floor over itself %v", got)
	}
}

// TestRotationTable: one round reads as a single storm did; more rounds
// give medians with their ranges.
func TestRotationTable(t *testing.T) {
	e := &Env{Opts: Options{RotationConns: 500, RotationDeadline: time.Minute}}
	one := e.rotationTable([]stormSeries{storms("floor", 50000, 180*time.Microsecond, 6), storms("meshca", 50000, 220*time.Microsecond, 9)}, 50000)
	if got, want := one.Rows[1], []string{"meshca", "mTLS", "50,000", "0", "0 (0)", "—", "9.0 s", "1.50×", "100 MiB", "1.00×", "900 ms", "450 ms", "220 µs", "1.50"}; !slices.Equal(got, want) {
		t.Errorf("one round: %q\nwant %q", got, want)
	}
	three := e.rotationTable([]stormSeries{storms("floor", 50000, 180*time.Microsecond, 6, 16, 5), storms("meshca", 50000, 220*time.Microsecond, 9, 20, 10)}, 50000)
	if got, want := three.Rows[1][2:8], []string{"50,000", "0", "0 (0)", "—", "10.0 s (9.0 s–20.0 s)", "1.50×"}; !slices.Equal(got, want) {
		t.Errorf("three rounds: %q, want %q", got, want)
	}
	// 13.5 s of CPU over 9, 20 and 10 s.
	if got, want := three.Rows[1][11], "500 ms (450 ms–1,000 ms)"; got != want {
		t.Errorf("three rounds: p99 from the sending %q, want %q", got, want)
	}
	if got, want := three.Rows[1][13], "1.35 (0.68–1.50)"; got != want {
		t.Errorf("three rounds: processors busy %q, want %q", got, want)
	}
	m := storms("meshca", 50000, 220*time.Microsecond, 9, 20, 10)
	for i, n := range []int{44000, 90000, 45000} {
		m.runs[i].res.Shed, m.runs[i].res.Hints = n, make([]time.Duration, n)
	}
	shed := e.rotationTable([]stormSeries{storms("floor", 50000, 180*time.Microsecond, 6, 16, 5), m}, 50000)
	if got, want := shed.Rows[1][4], "45,000 (45,000), 44,000–90,000"; got != want {
		t.Errorf("three rounds: shed %q, want %q", got, want)
	}
	if got := three.Title; got != "Rotation storm: 50,000 workloads due at once over 500 mTLS connections, 1m0s deadline, 3 rounds per server (medians and ranges)" {
		t.Errorf("title %q", got)
	}
}
