package pgenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the times in /proc/<pid>/stat.
const userHZ = 100

// CPUTime is the CPU time (user and system) the server has used so far: the
// postmaster's, its live children's (backends, background workers) and
// that of the children that exited, which the postmaster reaped. Benchmarks
// take the difference across a run: the server's share of the work, which
// the test process's own CPU time leaves out.
func (s *Server) CPUTime() (time.Duration, error) {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil {
		return 0, fmt.Errorf("pgenv: the server is not running")
	}
	root := p.cmd.Process.Pid
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks uint64
	for _, path := range stats {
		f, err := procStat(path)
		if err != nil || (f.pid != root && f.ppid != root) {
			continue // gone meanwhile, or not the server's
		}
		ticks += f.utime + f.stime
		if f.pid == root {
			ticks += f.cutime + f.cstime
		}
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

type stat struct {
	pid, ppid                    int
	utime, stime, cutime, cstime uint64
}

// procStat parses the fields of /proc/<pid>/stat that CPUTime needs (see
// proc(5): the command, in parentheses, may hold spaces).
func procStat(path string) (stat, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return stat{}, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return stat{}, fmt.Errorf("%s: malformed", path)
	}
	f := strings.Fields(s[end+1:]) // f[0] is field 3 (state)
	if len(f) < 15 {
		return stat{}, fmt.Errorf("%s: malformed", path)
	}
	var st stat
	st.pid, err = strconv.Atoi(strings.TrimSpace(s[:open]))
	if err == nil {
		st.ppid, err = strconv.Atoi(f[1])
	}
	for i, dst := range []*uint64{&st.utime, &st.stime, &st.cutime, &st.cstime} {
		if err == nil {
			*dst, err = strconv.ParseUint(strings.TrimPrefix(f[11+i], "-"), 10, 64)
		}
	}
	return st, err
}
