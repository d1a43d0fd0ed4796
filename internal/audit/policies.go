package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
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
