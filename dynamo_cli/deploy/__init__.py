"""Deploying a profile elsewhere than this machine: Kubernetes manifests (`dynamo deploy k8s`)."""
