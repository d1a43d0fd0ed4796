// Package kube loads Istio's PeerAuthentication and AuthorizationPolicy
// objects from the Kubernetes API (the security.istio.io CRDs), once or
// kept current with dynamic informers, into a policy.Set with the same
// strict decoding as files.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshca/meshca/policy"
)

// The resources read, at the v1 API version Istio serves.
var (
	AuthorizationPolicies = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "authorizationpolicies"}
	PeerAuthentications   = schema.GroupVersionResource{Group: "security.istio.io", Version: "v1", Resource: "peerauthentications"}
)

var resources = []schema.GroupVersionResource{PeerAuthentications, AuthorizationPolicies}

// Load lists both kinds in every namespace and builds a Set.
func Load(ctx context.Context, client dynamic.Interface, o policy.Options) (*policy.Set, error) {
	var objs []*unstructured.Unstructured
	for _, gvr := range resources {
		list, err := client.Resource(gvr).List(ctx, metav1.ListOptions{})
		if err != nil {
			return nil, fmt.Errorf("policy/kube: list %s: %w", gvr.Resource, err)
		}
		for i := range list.Items {
			objs = append(objs, &list.Items[i])
		}
	}
	return build(objs, o)
}

// build decodes objects through the same path as YAML files: one document
// per object, named "kubernetes:<kind>/<namespace>/<name>" in errors.
func build(objs []*unstructured.Unstructured, o policy.Options) (*policy.Set, error) {
	sort.Slice(objs, func(i, j int) bool { return key(objs[i]) < key(objs[j]) })
	var docs []string
	for _, u := range objs {
		clean := map[string]any{
			"apiVersion": u.GetAPIVersion(),
			"kind":       u.GetKind(),
			"metadata": map[string]any{
				"name":              u.GetName(),
				"namespace":         u.GetNamespace(),
				"annotations":       u.GetAnnotations(),
				"creationTimestamp": u.GetCreationTimestamp().UTC().Format(time.RFC3339),
			},
		}
		if spec, ok := u.Object["spec"]; ok {
			clean["spec"] = spec
		}
		b, err := json.Marshal(clean)
		if err != nil {
			return nil, fmt.Errorf("policy/kube: %s: %w", key(u), err)
		}
		docs = append(docs, string(b))
	}
	set, err := o.Parse("kubernetes", []byte(strings.Join(docs, "\n---\n")))
	if err == nil {
		return set, nil
	}
	// Name the objects at fault: parse them one by one (only on failure, so
	// the common path stays one pass).
	var errs []error
	for i, doc := range docs {
		if _, perr := o.Parse("kubernetes:"+key(objs[i]), []byte(doc)); perr != nil {
			errs = append(errs, perr)
		}
	}
	if len(errs) == 0 {
		return nil, err // a conflict between objects, e.g. a duplicate
	}
	return nil, errors.Join(errs...)
}

func key(u *unstructured.Unstructured) string {
	return u.GetKind() + "/" + u.GetNamespace() + "/" + u.GetName()
}

// Watch keeps a Set current: it starts informers on both kinds and calls
// onChange with a freshly built Set (or the decoding error) after the
// initial sync and after every change, until ctx ends. Calls are
// serialised.
func Watch(ctx context.Context, client dynamic.Interface, o policy.Options, onChange func(*policy.Set, error)) error {
	factory := dynamicinformer.NewDynamicSharedInformerFactory(client, 10*time.Minute)
	var informers []cache.SharedIndexInformer
	changed := make(chan struct{}, 1)
	poke := func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}
	for _, gvr := range resources {
		inf := factory.ForResource(gvr).Informer()
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("policy/kube: %w", err)
		}
		informers = append(informers, inf)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	for _, inf := range informers {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return ctx.Err()
		}
	}
	poke()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
		var objs []*unstructured.Unstructured
		for _, inf := range informers {
			for _, item := range inf.GetStore().List() {
				if u, ok := item.(*unstructured.Unstructured); ok {
					objs = append(objs, u)
				}
			}
		}
		onChange(build(objs, o))
	}
}

// Workloads lists the pods of the cluster as the workloads that policy
// selectors may match (for Lint).
func Workloads(ctx context.Context, cs kubernetes.Interface) ([]policy.WorkloadInfo, error) {
	pods, err := cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("policy/kube: list pods: %w", err)
	}
	out := make([]policy.WorkloadInfo, 0, len(pods.Items))
	for _, p := range pods.Items {
		out = append(out, policy.WorkloadInfo{Namespace: p.Namespace, Labels: p.Labels})
	}
	return out, nil
}
