//! podstat: per-pod CPU throttling, run-queue and RX-steering metrics for Kubernetes nodes.
pub mod cgroup;
