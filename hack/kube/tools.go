//go:build tools

// Package tools pins the commands this module builds, so that `go mod tidy` keeps their
// dependencies: the control plane of the k8s tier, and the node of the cluster tier.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
