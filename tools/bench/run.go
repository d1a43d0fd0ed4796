package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meshca/meshca/tools/bench/internal/meshca"
	"github.com/meshca/meshca/tools/bench/internal/report"
	"github.com/meshca/meshca/tools/bench/internal/scenario"
)

// run parses the flags, prepares the binaries and runs the scenarios.
func run(args []string) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o scenario.Options
	scenarios := fs.String("scenarios", "mtls,k8s,storm,rotation", "scenarios to run, in order: mtls, k8s, storm, rotation")
	fs.IntVar(&o.Clients, "clients", 32, "clients, each with its own persistent connection")
	fs.IntVar(&o.Rounds, "rounds", 5, "mtls, k8s: rounds per server, interleaved across servers")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "mtls, k8s: uncounted load before each measured round")
	fs.DurationVar(&o.Duration, "duration", 3*time.Second, "mtls, k8s: measured time per server and round")
	fs.IntVar(&o.StormRounds, "storm-rounds", 3, "storm: rounds per server, interleaved across servers")
	fs.IntVar(&o.StormCSRs, "storm-csrs", 640, "storm: CSRs per server and round, each with a token never seen")
	fs.IntVar(&o.RotationWorkloads, "rotation-workloads", 50000, "rotation: workloads due at once")
	fs.IntVar(&o.RotationConns, "rotation-conns", 500, "rotation: connections the workloads share")
	fs.DurationVar(&o.RotationDeadline, "rotation-deadline", time.Minute, "rotation: time every workload has to renew")
	fs.IntVar(&o.RotationRounds, "rotation-rounds", 1, "rotation: storms per server, interleaved across servers (the table gives medians and ranges)")
	modes := fs.String("k8s-modes", "tokenreview,jwks,informer", "meshca --k8s-attestation modes in k8s and storm (unsupported ones are skipped, saying why)")
	repo := fs.String("repo", "", "meshca repository (default: found above the working directory)")
	bin := fs.String("meshca", "", "meshca binary (default: built from -repo into the work directory)")
	fs.StringVar(&o.TestenvBin, "testenv-bin", os.Getenv("MESHCA_TESTENV_BIN"), "directory of kube-apiserver and etcd (default $MESHCA_TESTENV_BIN, else <repo>/.testenv/bin)")
	work := fs.String("work", "", "directory for CA files, data and logs (default: a temporary one, removed after)")
	meshcaArgs := fs.String("meshca-args", "", "more flags for every `meshca server`, space-separated (e.g. \"--profiling\")")
	fs.StringVar(&o.MeshcaB, "meshca-b", "", "mtls, k8s, storm, rotation: a second meshca binary, measured beside -meshca in the same interleaved rounds (to compare two builds; k8s logs B over A per mode)")
	jsonOut := fs.String("json", "", "also write the tables to this JSON file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.K8sModes = strings.Split(*modes, ",")
	o.MeshcaArgs = strings.Fields(*meshcaArgs)
	var err error
	if *repo == "" {
		if *repo, err = repoRoot(); err != nil {
			return err
		}
	}
	if o.TestenvBin == "" {
		o.TestenvBin = filepath.Join(*repo, ".testenv", "bin")
	}
	if *work == "" {
		if *work, err = os.MkdirTemp("", "meshca-bench-"); err != nil {
			return err
		}
		defer os.RemoveAll(*work)
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if *bin == "" {
		*bin = filepath.Join(*work, "meshca")
		fmt.Fprintf(os.Stderr, "building meshca from %s\n", *repo)
		if err := meshca.Build(*repo, *bin); err != nil {
			return err
		}
	}
	header := runHeader(*repo, args)
	for _, h := range header {
		fmt.Println(h)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env, err := scenario.NewEnv(o, *work, self, *bin, os.Stderr)
	if err != nil {
		return err
	}
	defer env.Close()
	runs := map[string]func(context.Context) (report.Table, error){
		"mtls": env.MTLS, "k8s": env.K8s, "storm": env.Storm, "rotation": env.Rotation,
	}
	var tables []report.Table
	names := strings.Split(*scenarios, ",")
	for i, name := range names {
		f, ok := runs[name]
		if !ok {
			return fmt.Errorf("unknown scenario %q", name)
		}
		t, err := f(ctx)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		t.Markdown(os.Stdout)
		tables = append(tables, t)
		if !slices.ContainsFunc(names[i+1:], func(n string) bool { return n == "k8s" || n == "storm" }) {
			env.StopKube() // not needed any more: no idle apiserver beside what follows
		}
	}
	if *jsonOut != "" {
		return report.WriteJSON(*jsonOut, header, tables)
	}
	return nil
}

// runHeader says what was measured where: the command, the machine, the
// date and meshca's commit.
func runHeader(repo string, args []string) []string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	commit := "unknown"
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "--short", "HEAD").Output(); err == nil { //nolint:gosec // G204: -repo is the user's
		commit = strings.TrimSpace(string(out))
		if st, _ := exec.Command("git", "-C", repo, "status", "--porcelain", "--untracked-files=no").Output(); len(st) > 0 { //nolint:gosec // G204: as above
			commit += " (with uncommitted changes)"
		}
	}
	return []string{
		"## bench " + strings.Join(args, " "),
		"",
		fmt.Sprintf("- machine: %d vCPU %q, %s %s/%s", runtime.NumCPU(), model, runtime.Version(), runtime.GOOS, runtime.GOARCH),
		"- date: " + time.Now().Format("2006-01-02 15:04 MST"),
		"- meshca commit: " + commit,
	}
}

// repoRoot walks up from the working directory to the go.mod of
// github.com/meshca/meshca.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if f := strings.Fields(line); len(f) == 2 && f[0] == "module" && f[1] == "github.com/meshca/meshca" {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("meshca repository not found above the working directory; pass -repo")
		}
		dir = parent
	}
}
