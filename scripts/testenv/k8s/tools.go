//go:build tools

// Package tools records the upstream main packages that build.sh compiles, so
// that `go mod tidy` keeps their dependencies in go.mod/go.sum. The etcd and
// CoreDNS mains are small local wrappers under ./cmd.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
