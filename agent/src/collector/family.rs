//! What the collectors share to encode: kernel histograms in Prometheus terms, the join of
//! kernel aggregates to pod labels, and the list of every metric family podstat exports (read
//! by the docs test and the dashboards' test).

use podstat_common::kernel::{Hist, Layout, SUB_BUCKETS};
use prometheus_client::encoding::{
    DescriptorEncoder, NativeHistogram, NativeHistogramBuckets, NoLabelSet,
};

use crate::{
    identity::{IdMap, Target},
    metric::Family,
};

/// A kernel histogram in Prometheus terms, both ways at once: the native histogram (schema 2,
/// one bucket per kernel bucket) and the classic buckets at a subset of the kernel's edges.
/// The text formats carry the classic buckets, the protobuf format what `--web.histograms`
/// says (the exposition drops the other).
#[derive(Debug, Clone, PartialEq)]
pub struct PromHist {
    pub sum: f64,
    pub count: u64,
    /// Classic buckets: upper bound and the count in that bucket alone (not cumulative), the
    /// last one +Inf.
    pub buckets: Vec<(f64, u64)>,
    /// Native: the zero bucket's upper edge and count.
    pub zero_threshold: f64,
    pub zero_count: u64,
    /// Native: spans `(offset, length)` of populated buckets and their delta-coded counts.
    pub spans: Vec<(i32, u32)>,
    pub deltas: Vec<i64>,
}

/// The classic edges of a histogram: native bucket indexes (schema 2, `2^(i/4)` exported
/// units), each an edge of the kernel layout, so `histogram_quantile` on them is exact there.
#[derive(Debug, Clone, Copy)]
pub struct Classic(pub &'static [i32]);

impl Classic {
    /// The upper bound of native bucket `i` at the kernel's schema.
    pub fn bound(i: i32) -> f64 {
        native_bound(podstat_common::kernel::SCHEMA, i)
    }
}

/// The upper bound of native bucket `index` at `schema`: `2^(index / 2^schema)`, exact for
/// the powers of two, and the same float wherever it is computed.
pub fn native_bound(schema: i32, index: i32) -> f64 {
    if schema <= 0 {
        return 2f64.powi(index << schema.saturating_neg().clamp(0, 8));
    }
    let n = 1i32 << schema.min(8);
    2f64.powi(index.div_euclid(n)) * 2f64.powf(f64::from(index.rem_euclid(n)) / f64::from(n))
}

/// Converts a kernel [`Hist`] with layout `l` to Prometheus terms: sums divided by `scale`
/// (1e9 for ns → s, 1 for counts), native buckets one per populated kernel bucket, classic
/// buckets at `classic`'s edges. Values above the layout's top are counted, natively, in the
/// bucket just above it (as a classic +Inf bucket would: a quantile there reads as its edge).
#[expect(
    clippy::cast_precision_loss,
    reason = "sums are far below 2^53 ns (104 days)"
)]
pub fn to_prom<const N: usize>(h: &Hist<N>, l: &Layout, classic: Classic, scale: f64) -> PromHist {
    debug_assert_eq!(N, l.slots());
    let zero_count = h[0];
    let mut count = 0u64;
    let mut spans: Vec<(i32, u32)> = Vec::new();
    let mut deltas: Vec<i64> = Vec::new();
    let mut prev_count: i64 = 0;
    let mut prev_index: Option<i32> = None;
    let mut cum = zero_count;
    let mut edges = classic.0.iter().copied().peekable();
    let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(classic.0.len() + 1);
    let mut classic_cum = 0u64;
    for (slot, &n) in h.iter().enumerate().take(l.overflow_slot() + 1).skip(1) {
        let index = l.native_index(slot);
        // Classic edges below this bucket take everything counted so far.
        while let Some(&edge) = edges.peek() {
            if edge >= index {
                break;
            }
            buckets.push((Classic::bound(edge), cum - classic_cum));
            classic_cum = cum;
            edges.next();
        }
        cum += n;
        if n == 0 {
            continue;
        }
        count += n;
        let n_i = i64::try_from(n).unwrap_or(i64::MAX);
        match (prev_index, spans.last_mut()) {
            (Some(p), Some(last)) if p + 1 == index => last.1 += 1,
            (Some(p), _) => spans.push((index - p - 1, 1)),
            (None, _) => spans.push((index, 1)),
        }
        deltas.push(n_i - prev_count);
        prev_count = n_i;
        prev_index = Some(index);
    }
    for edge in edges {
        buckets.push((Classic::bound(edge), cum - classic_cum));
        classic_cum = cum;
    }
    buckets.push((f64::INFINITY, cum - classic_cum));
    PromHist {
        sum: h[l.sum_slot()] as f64 / scale,
        count: count + zero_count,
        buckets,
        zero_threshold: Classic::bound(
            i32::try_from(SUB_BUCKETS).unwrap_or(4)
                * (i32::try_from(l.zero_log2).unwrap_or(0) + l.unit_log2),
        ),
        zero_count,
        spans,
        deltas,
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
        let native = NativeHistogram {
            schema: podstat_common::kernel::SCHEMA,
            zero_threshold: h.zero_threshold,
            zero_count: h.zero_count,
            negative: NativeHistogramBuckets {
                spans: &[],
                deltas: &[],
            },
            positive: NativeHistogramBuckets {
                spans: &h.spans,
                deltas: &h.deltas,
            },
            created: None,
        };
        m.encode_family(t)?
            .encode_histogram_with_native::<NoLabelSet>(h.sum, h.count, &h.buckets, None, native)?;
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
    v.push(&super::cgroup::NODE_SCHED_EXT);
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

    use podstat_common::kernel::TIME_UNIT_LOG2;

    const L: Layout = Layout {
        zero_log2: 10,
        top_log2: 30,
        unit_log2: TIME_UNIT_LOG2,
    };

    #[test]
    fn kernel_hist_converts_to_native_and_classic() {
        let mut h = [0u64; L.slots()];
        h[0] = 2; // zero bucket: <= 2^-20 s
        h[1] = 3; // (2^-20, 2^-19.75]: native index -79
        h[2] = 1; // -78
        h[5] = 4; // -75
        h[L.buckets()] = 1; // (2^-0.25, 1]: native index 0
        h[L.overflow_slot()] = 2; // > 1 s
        h[L.sum_slot()] = 3_500_000_000;
        let p = to_prom(&h, &L, Classic(&[-78, -76, 0]), 1e9);
        assert_eq!(p.count, 13);
        assert!((p.sum - 3.5).abs() < 1e-12);
        assert!((p.zero_threshold - 2f64.powi(-20)).abs() < 1e-30);
        assert_eq!(p.zero_count, 2);
        assert_eq!(p.spans, vec![(-79, 2), (2, 1), (74, 2)]);
        assert_eq!(p.deltas, vec![3, -2, 3, -3, 1]);
        let bounds: Vec<f64> = p.buckets.iter().map(|b| b.0).collect();
        assert_eq!(
            bounds,
            vec![2f64.powf(-19.5), 2f64.powi(-19), 1.0, f64::INFINITY]
        );
        let counts: Vec<u64> = p.buckets.iter().map(|b| b.1).collect();
        // <= 2^-19.5: zero + 3 + 1; <= 2^-19: nothing more; <= 1: 4 + 1; +Inf: the overflow.
        assert_eq!(counts, vec![6, 0, 5, 2]);
        assert_eq!(counts.iter().sum::<u64>(), p.count);
    }

    #[test]
    fn empty_hist_is_still_native() {
        let h = [0u64; L.slots()];
        let p = to_prom(&h, &L, Classic(&[0]), 1e9);
        assert_eq!(p.count, 0);
        assert!(p.spans.is_empty());
        assert!(p.zero_threshold > 0.0, "a zero threshold marks it native");
        assert_eq!(p.buckets, vec![(1.0, 0), (f64::INFINITY, 0)]);
    }

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
