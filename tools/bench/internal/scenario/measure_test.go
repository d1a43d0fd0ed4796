package scenario

import (
	"testing"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/load"
)

func TestVersus(t *testing.T) {
	round := func(ok int, cpu time.Duration) sample {
		return sample{res: load.Result{OK: ok, Elapsed: time.Second}, cpu: cpu}
	}
	tests := []struct {
		name      string
		a, b      []sample
		rate, cpu float64
	}{
		{"same", []sample{round(100, time.Second)}, []sample{round(100, time.Second)}, 1, 1},
		{
			"median of the ratios in each round, not the ratio of the medians",
			[]sample{round(100, 100*time.Millisecond), round(200, 100*time.Millisecond), round(400, 100*time.Millisecond)},
			[]sample{round(110, 220*time.Millisecond), round(180, 90*time.Millisecond), round(480, 200*time.Millisecond)},
			1.1, 5.0 / 3,
		},
		{"B without a round of A", []sample{round(100, time.Second)}, []sample{round(50, time.Second), round(1, time.Second)}, 0.5, 2},
		{"a round without certificates", []sample{round(0, time.Second), round(100, time.Second)}, []sample{round(10, time.Second), round(90, time.Second)}, 0.9, 1.0 / 0.9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rate, cpu := (&series{samples: tt.b}).versus(&series{samples: tt.a})
			if d := rate - tt.rate; d > 1e-9 || d < -1e-9 {
				t.Errorf("rate ratio %v, want %v", rate, tt.rate)
			}
			if d := cpu - tt.cpu; d > 1e-9 || d < -1e-9 {
				t.Errorf("CPU ratio %v, want %v", cpu, tt.cpu)
			}
		})
	}
}

func TestClientCPUAndIdle(t *testing.T) {
	round := func(ok int, clientCPU time.Duration, idle float64) sample {
		return sample{res: load.Result{OK: ok, Elapsed: time.Second}, clientCPU: clientCPU, idle: idle}
	}
	tests := []struct {
		name      string
		samples   []sample
		clientCPU time.Duration
		idle      float64
	}{
		{"one round", []sample{round(100, time.Second, 0.1)}, 10 * time.Millisecond, 0.1},
		{
			"medians over rounds",
			[]sample{round(100, time.Second, 0.3), round(1000, time.Second, 0.05), round(10, time.Second, 0.1)},
			10 * time.Millisecond, 0.1,
		},
		{"a round without certificates counts for idle only", []sample{round(0, time.Second, 0.9), round(50, time.Second, 0.2), round(100, time.Second, 0.1)}, 15 * time.Millisecond, 0.2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &series{samples: tt.samples}
			if got := s.clientCPUPerCSR(); got != tt.clientCPU {
				t.Errorf("clientCPUPerCSR = %v, want %v", got, tt.clientCPU)
			}
			if got := s.idle(); got != tt.idle {
				t.Errorf("idle = %v, want %v", got, tt.idle)
			}
		})
	}
}
