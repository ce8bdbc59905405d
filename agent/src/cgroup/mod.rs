//! cgroup discovery and parsing (in progress).
