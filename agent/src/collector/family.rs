//! What the collectors share to encode: kernel histograms in Prometheus terms, the join of
//! kernel aggregates to pod labels, and the list of every metric family podstat exports (read
//! by the docs test and the dashboards' test).

use podstat_common::kernel::{BUCKETS, Hist, INF_SLOT, SUM_SLOT};
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};

use crate::{
    identity::{IdMap, Target},
    metric::Family,
};

/// A kernel histogram in Prometheus terms: (sum, count, per-bucket counts with upper bounds).
pub struct PromHist {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

/// Converts a kernel [`Hist`] with upper bounds `bounds` (in kernel units) to Prometheus
/// buckets, dividing values by `scale` (1e9 for ns → s, 1 for counts).
#[expect(
    clippy::cast_precision_loss,
    reason = "bounds and sums are far below 2^53"
)]
pub fn to_prom(h: &Hist, bounds: &[u64; BUCKETS], scale: f64) -> PromHist {
    let mut buckets: Vec<(f64, u64)> = bounds
        .iter()
        .zip(h.iter())
        .map(|(b, n)| (*b as f64 / scale, *n))
        .collect();
    buckets.push((f64::INFINITY, h[INF_SLOT]));
    let count = h[..=INF_SLOT].iter().sum();
    PromHist {
        sum: h[SUM_SLOT] as f64 / scale,
        count,
        buckets,
    }
}

/// Encodes one histogram family from `(labels, hist)` rows.
pub fn encode_hists(
    enc: &mut DescriptorEncoder,
    family: &Family,
    rows: &[(Target, PromHist)],
) -> Result<(), std::fmt::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut m = family.encode(enc)?;
    for (t, h) in rows {
        m.encode_family(t)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

/// Joins kernel aggregates keyed by cgroup id to their labels: entries of cgroups the identity
/// does not know (gone, or not a pod) are dropped; rows come out sorted by pod and container.
pub fn join<V>(identity: &IdMap, entries: impl IntoIterator<Item = (u64, V)>) -> Vec<(Target, V)> {
    let mut rows: Vec<(Target, V)> = entries
        .into_iter()
        .filter_map(|(id, v)| identity.get(id).map(|t| (t, v)))
        .collect();
    rows.sort_by(|a, b| {
        a.0.pod_uid
            .cmp(&b.0.pod_uid)
            .then_with(|| a.0.container_id.cmp(&b.0.container_id))
    });
    rows
}

/// Every family podstat can export: each collector's, the collectors' and probes'
/// self-metrics, and the metadata provider's.
pub fn all() -> Vec<&'static Family> {
    let mut v: Vec<&'static Family> = super::cgroup::FAMILIES.iter().map(|(f, _)| f).collect();
    v.extend(super::sched::FAMILIES);
    v.extend(super::throttle::FAMILIES);
    v.extend(super::net::FAMILIES);
    v.extend(super::SELF_FAMILIES);
    v.extend(crate::probe::metrics::FAMILIES);
    v.extend(crate::metadata::FAMILIES);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_declared_once() {
        let mut names: Vec<&str> = all().iter().map(|f| f.exposed).collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a family is declared twice");
        assert!(names.iter().all(|n| n.starts_with("podstat_")));
    }
}
