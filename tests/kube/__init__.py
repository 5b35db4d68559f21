"""The Kubernetes tests: the fake kube-apiserver, real kubectl against it, the Kubernetes
authorizers, provisioned and node-debug terminals (their shared set-up: setup.py)."""
