// Package proc starts the processes under test and reads what the kernel
// accounts for each of them: CPU time (utime+stime of every thread) from
// /proc/<pid>/stat and peak resident memory (VmHWM) from
// /proc/<pid>/status. Linux only, as the benchmark is.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// stopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const stopTimeout = 10 * time.Second

// Proc is a started child process whose output goes to a log file.
type Proc struct {
	Name    string
	LogPath string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
}

// Start runs path with args, its stdout and stderr appended to logPath, and
// env added to the environment. The child gets SIGKILL if the benchmark dies,
// so nothing is left running.
func Start(name, logPath string, env []string, path string, args ...string) (*Proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...) //nolint:gosec // G204: starting the servers under test is this package's job
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("proc: start %s: %w", name, err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		_ = f.Close()
		close(p.done)
	}()
	return p, nil
}

// PID is the child's process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.waitErr
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and SIGKILL after stopTimeout. Safe on nil and on an
// exited process.
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	if exited, _ := p.Exited(); exited {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// WaitReady polls ready every 50 ms until it holds, the process exits or
// timeout passes.
func (p *Proc) WaitReady(timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ready() {
		if exited, err := p.Exited(); exited {
			return fmt.Errorf("proc: %s exited before it was ready (%v)%s", p.Name, err, p.Tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("proc: %s not ready after %s%s", p.Name, timeout, p.Tail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// CPU is the user+system CPU time the process (all its threads) has used.
func (p *Proc) CPU() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID()))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a
// /proc/<pid>/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func parseStatCPU(b []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("proc: malformed stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("proc: short stat")
	}
	var ticks int64
	for _, s := range f[11:13] { // fields 14 and 15 of the line
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("proc: stat: %w", err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// PeakRSS is the process's peak resident set size (VmHWM) in bytes since it
// started or since the last ResetPeakRSS.
func (p *Proc) PeakRSS() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.PID()))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				break
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("proc: no VmHWM in status")
}

// ResetPeakRSS sets VmHWM back to the current resident size (writing 5 to
// /proc/<pid>/clear_refs), so a peak can be measured per run.
func (p *Proc) ResetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.PID()), []byte("5"), 0)
}

// Tail is the end of the process's log, for an error message.
func (p *Proc) Tail() string {
	f, err := os.Open(p.LogPath)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	const limit = 4 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > limit {
		_, _ = f.Seek(fi.Size()-limit, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return fmt.Sprintf("\n---- %s log (%s) ----\n%s", p.Name, p.LogPath, b)
}

// FreePorts returns n distinct TCP ports free on 127.0.0.1 right now.
func FreePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer func() { _ = l.Close() }()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Listening reports whether something accepts TCP connections on addr.
func Listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// SelfCPU is the user+system CPU time this process (the load generator and
// its clients) has used.
func SelfCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("proc: getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// MachineTimes is the machine's CPU time since boot from the first line of
// /proc/stat, in clock ticks summed over every CPU: idle is idle plus
// iowait, total every state.
type MachineTimes struct{ Idle, Total int64 }

// Machine reads MachineTimes.
func Machine() (MachineTimes, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return MachineTimes{}, err
	}
	return parseMachineTimes(b)
}

func parseMachineTimes(b []byte) (MachineTimes, error) {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 6 || f[0] != "cpu" {
		return MachineTimes{}, errors.New("proc: malformed /proc/stat")
	}
	var t MachineTimes
	// user nice system idle iowait irq softirq steal; then guest and
	// guest_nice, which user and nice include already, and whatever a
	// later kernel adds.
	for i, s := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return MachineTimes{}, fmt.Errorf("proc: /proc/stat: %w", err)
		}
		t.Total += n
		if i == 3 || i == 4 { // idle, iowait
			t.Idle += n
		}
	}
	return t, nil
}

// IdleSince is the fraction of the machine's CPU time that was idle between
// t0 and t.
func (t MachineTimes) IdleSince(t0 MachineTimes) float64 {
	if t.Total <= t0.Total {
		return 0
	}
	return float64(t.Idle-t0.Idle) / float64(t.Total-t0.Total)
}
