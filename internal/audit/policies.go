package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/meshca/meshca/internal/kubeclient"
	"github.com/meshca/meshca/policy"
	"github.com/meshca/meshca/policy/kube"
)

// PolicySource says where `meshca audit` reads policies: files and
// directories, or the cluster's security.istio.io objects (Kube).
type PolicySource struct {
	Paths []string
	Kube  *kubeclient.Config
}

// kubeLoadTimeout bounds listing the policies from the API server.
const kubeLoadTimeout = 30 * time.Second

// LoadPolicies loads the policies from exactly one source.
func LoadPolicies(ctx context.Context, src PolicySource, opts policy.Options) (*policy.Set, error) {
	switch {
	case src.Kube != nil && len(src.Paths) > 0:
		return nil, errors.New("--policies and --kube: choose one")
	case src.Kube != nil:
		cfg, err := src.Kube.REST()
		if err != nil {
			return nil, err
		}
		dc, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return nil, err
		}
		ctx, cancel := context.WithTimeout(ctx, kubeLoadTimeout)
		defer cancel()
		return kube.Load(ctx, dc, opts)
	case len(src.Paths) == 0:
		return nil, errors.New("--policies (or --kube) is required")
	}
	return opts.Load(src.Paths...)
}

// ReadRequest reads one authorization request as JSON from a file, or from
// stdin when path is "-".
func ReadRequest(path string, stdin io.Reader) (policy.Request, error) {
	r := stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return policy.Request{}, err
		}
		defer func() { _ = f.Close() }() // read only
		r = f
	}
	req, err := policy.DecodeRequest(r)
	if err != nil {
		return policy.Request{}, fmt.Errorf("not a request: %w", err)
	}
	return req, nil
}

// Request is the request `meshca audit authz` decides: read from File
// (a path, or "-" for stdin) when set, else Flags with Claims as its JWT
// claims; validated either way. Its errors are the user's to fix.
func Request(file string, stdin io.Reader, flags policy.Request, claims map[string]string) (policy.Request, error) {
	var req policy.Request
	if file != "" {
		var err error
		if req, err = ReadRequest(file, stdin); err != nil {
			return req, fmt.Errorf("--request: %w", err)
		}
	} else {
		if flags.Workload.Namespace == "" {
			return req, errors.New("give --request, or at least --namespace")
		}
		req = flags
		req.Protocol = strings.ToUpper(req.Protocol)
		req.Request.Claims = map[string]any{}
		for k, v := range claims {
			req.Request.Claims[k] = v
		}
	}
	return req, req.Validate()
}
