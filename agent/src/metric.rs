//! A metric family, declared once as a constant: its name, type and help. The encoders, the
//! docs test and the operator views read these constants, so no metric name is spelled twice.
//!
//! A leaf module, so every layer that exports metrics (collectors, the probes' and the
//! metadata provider's self-metrics) can declare its families here without importing another.

use prometheus_client::{
    encoding::{DescriptorEncoder, MetricEncoder},
    metrics::MetricType,
};

/// One metric family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The name as encoded: without the `_total` or `_info` suffix the encoder adds.
    pub name: &'static str,
    /// The name as exposed and queried (`_total` for counters, `_info` for info metrics).
    pub exposed: &'static str,
    pub kind: MetricType,
    pub help: &'static str,
}

impl Family {
    /// Starts encoding this family.
    pub fn encode<'a>(
        &self,
        enc: &'a mut DescriptorEncoder<'_>,
    ) -> Result<MetricEncoder<'a>, std::fmt::Error> {
        enc.encode_descriptor(self.name, self.help, None, self.kind)
    }
}

/// `counter!("podstat_x_seconds", "help")`: exposed as `podstat_x_seconds_total`.
#[macro_export]
macro_rules! counter {
    ($name:literal, $help:expr $(,)?) => {
        $crate::metric::Family {
            name: $name,
            exposed: concat!($name, "_total"),
            kind: prometheus_client::metrics::MetricType::Counter,
            help: $help,
        }
    };
}

/// `gauge!("podstat_x", "help")`.
#[macro_export]
macro_rules! gauge {
    ($name:literal, $help:expr $(,)?) => {
        $crate::metric::Family {
            name: $name,
            exposed: $name,
            kind: prometheus_client::metrics::MetricType::Gauge,
            help: $help,
        }
    };
}

/// `histogram!("podstat_x_seconds", "help")`.
#[macro_export]
macro_rules! histogram {
    ($name:literal, $help:expr $(,)?) => {
        $crate::metric::Family {
            name: $name,
            exposed: $name,
            kind: prometheus_client::metrics::MetricType::Histogram,
            help: $help,
        }
    };
}

/// `info!("podstat_x", "help")`: exposed as `podstat_x_info`.
#[macro_export]
macro_rules! info_family {
    ($name:literal, $help:expr $(,)?) => {
        $crate::metric::Family {
            name: $name,
            exposed: concat!($name, "_info"),
            kind: prometheus_client::metrics::MetricType::Info,
            help: $help,
        }
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn exposed_names_carry_the_suffix_the_encoder_adds() {
        let c = counter!("podstat_a_seconds", "a");
        assert_eq!(c.exposed, "podstat_a_seconds_total");
        assert_eq!(gauge!("podstat_b", "b").exposed, "podstat_b");
        assert_eq!(
            info_family!("podstat_build", "c").exposed,
            "podstat_build_info"
        );
    }
}
