// Package kubeclient builds the one kind of Kubernetes client configuration
// meshca uses everywhere: in-cluster, or a kubeconfig file.
package kubeclient

import (
	"fmt"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config says how to reach the API server.
type Config struct {
	// Kubeconfig is a kubeconfig file. Empty: the in-cluster configuration,
	// or, outside a cluster when FallBack is set, client-go's default
	// loading rules ($KUBECONFIG, ~/.kube/config).
	Kubeconfig string
	// FallBack allows the default loading rules outside a cluster: right for
	// a command a person runs, wrong for a server, which must not pick up
	// whatever kubeconfig its user happens to have.
	FallBack bool
	// QPS and Burst are client-go's rate limit; zero keeps client-go's
	// defaults (5 and 10).
	QPS   float32
	Burst int
	// UserAgent names the caller in the API server's logs.
	UserAgent string
}

// REST returns the REST configuration.
func (c Config) REST() (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	switch {
	case c.Kubeconfig != "":
		if cfg, err = clientcmd.BuildConfigFromFlags("", c.Kubeconfig); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
	case c.FallBack:
		if cfg, err = rest.InClusterConfig(); err != nil {
			rules := clientcmd.NewDefaultClientConfigLoadingRules()
			if cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig(); err != nil {
				return nil, fmt.Errorf("kubeconfig: %w", err)
			}
		}
	default:
		if cfg, err = rest.InClusterConfig(); err != nil {
			return nil, fmt.Errorf("kubernetes: not running in a cluster (%v): give a kubeconfig", err)
		}
	}
	if c.QPS != 0 {
		cfg.QPS = c.QPS
	}
	if c.Burst != 0 {
		cfg.Burst = c.Burst
	}
	if c.UserAgent != "" {
		cfg.UserAgent = c.UserAgent
	}
	return cfg, nil
}

// Clientset returns a typed client.
func (c Config) Clientset() (kubernetes.Interface, error) {
	cfg, err := c.REST()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}
