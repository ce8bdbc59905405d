//! Reading a scrape: the agent's own exposition parser, sample selection, histograms.

/// The exposition parser is the agent's own (`podstat top --from` and `podstat explain --from`
/// read with it too).
pub use podstat::view::expo::{Sample, parse as parse_exposition};

/// The samples named `name` whose labels include all of `want`.
pub fn find<'a>(samples: &'a [Sample], name: &str, want: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect()
}

/// The one `podstat_probe_attached{probe}` sample; panics unless there is exactly one.
pub fn probe_attached<'a>(samples: &'a [Sample], probe: &str) -> &'a Sample {
    let found = find(samples, "podstat_probe_attached", &[("probe", probe)]);
    assert_eq!(
        found.len(),
        1,
        "no podstat_probe_attached{{probe=\"{probe}\"}}"
    );
    found[0]
}

/// A histogram read from a scrape: per-bucket (upper bound, cumulative count), sum, count.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    pub buckets: Vec<(f64, f64)>,
    pub sum: f64,
    pub count: f64,
}

impl Hist {
    /// The histogram `name` of the series whose labels include `want`, or None.
    pub fn find(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<Self> {
        let count = find(samples, &format!("{name}_count"), want);
        let count = count.first()?.value;
        let sum = find(samples, &format!("{name}_sum"), want)
            .first()
            .map_or(0.0, |s| s.value);
        let mut buckets: Vec<(f64, f64)> = find(samples, &format!("{name}_bucket"), want)
            .iter()
            .filter_map(|s| {
                let le = s.labels.get("le")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        Some(Self {
            buckets,
            sum,
            count,
        })
    }

    /// `self - earlier`, at the bounds of both: a native histogram's populated buckets grow
    /// between scrapes, and the cumulative count at a bound a scrape lacks is that of its
    /// largest bucket below it.
    #[must_use]
    pub fn minus(&self, earlier: &Self) -> Self {
        let at = |h: &Self, le: f64| {
            h.buckets
                .iter()
                .take_while(|(b, _)| *b <= le)
                .last()
                .map_or(0.0, |(_, n)| *n)
        };
        let mut bounds: Vec<f64> = self
            .buckets
            .iter()
            .chain(&earlier.buckets)
            .map(|(le, _)| *le)
            .collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup_by(|x, y| x.total_cmp(y).is_eq());
        let buckets = bounds
            .into_iter()
            .map(|le| (le, at(self, le) - at(earlier, le)))
            .collect();
        Self {
            buckets,
            sum: self.sum - earlier.sum,
            count: self.count - earlier.count,
        }
    }

    /// The q-quantile, interpolated within the bucket as Prometheus's histogram_quantile does.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let rank = q * self.count;
        let mut prev_le = 0.0;
        let mut prev_n = 0.0;
        for (le, n) in &self.buckets {
            if *n >= rank {
                if le.is_infinite() {
                    return prev_le;
                }
                let in_bucket = n - prev_n;
                return if in_bucket <= 0.0 {
                    *le
                } else {
                    prev_le + (le - prev_le) * (rank - prev_n) / in_bucket
                };
            }
            prev_le = *le;
            prev_n = *n;
        }
        prev_le
    }

    pub fn mean(&self) -> f64 {
        self.sum / self.count
    }

    /// Observations at or below `le` (cumulative count of that bucket).
    pub fn at_most(&self, le: f64) -> f64 {
        self.buckets
            .iter()
            .filter(|(b, _)| *b <= le + 1e-12)
            .map(|(_, n)| *n)
            .fold(0.0, f64::max)
    }
}
