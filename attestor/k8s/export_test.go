package k8s

import corev1 "k8s.io/api/core/v1"

// CachedPodForTest and CachedServiceAccountForTest read the informer
// caches, for tests of what they keep.
func CachedPodForTest(i *Informers, ns, name string) *corev1.Pod { return i.pod(ns, name) }

func CachedServiceAccountForTest(i *Informers, ns, name string) *corev1.ServiceAccount {
	return i.serviceAccount(ns, name)
}
