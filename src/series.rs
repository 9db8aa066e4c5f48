//! The metric series of one upstream's requests, cached in the snapshot: the
//! request path increments a counter it already holds instead of looking its
//! labels up (`crate::metrics` owns the families they belong to).

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use crate::affinity::Outcome;

/// `2xx` .. `5xx` for a status code.
pub fn code_class(status: u16) -> &'static str {
    CODE_CLASSES[code_class_index(status)]
}

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn code_class_index(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// The series the requests of one upstream write, looked up once per snapshot
/// rather than per request (`with_label_values` hashes the labels and takes a
/// lock each time). Each series is created on first use, exactly when
/// `with_label_values` would have created it, so `/metrics` shows the same series.
///
/// A snapshot's cache holds the series of the `Metrics` that first used it: the
/// one of the limpet that owns the snapshot.
#[derive(Debug)]
pub struct UpstreamSeries {
    affinity: [OnceLock<IntCounter>; Outcome::ALL.len()],
    backends: Vec<BackendSeries>,
}

#[derive(Debug, Default)]
struct BackendSeries {
    requests: [OnceLock<IntCounter>; CODE_CLASSES.len()],
    duration: OnceLock<Histogram>,
}

impl UpstreamSeries {
    pub fn new(backends: usize) -> Self {
        UpstreamSeries {
            affinity: Default::default(),
            backends: (0..backends).map(|_| BackendSeries::default()).collect(),
        }
    }

    /// `limpet_requests_total{upstream, backend, code}` for a request a backend answered.
    pub fn requests(
        &self,
        requests: &IntCounterVec,
        upstream: &str,
        backend: (usize, &str),
        status: u16,
    ) -> &IntCounter {
        let class = code_class_index(status);
        self.backends[backend.0].requests[class]
            .get_or_init(|| requests.with_label_values(&[upstream, backend.1, CODE_CLASSES[class]]))
    }

    /// `limpet_request_duration_seconds{upstream, backend}`.
    pub fn duration(
        &self,
        duration: &HistogramVec,
        upstream: &str,
        backend: (usize, &str),
    ) -> &Histogram {
        self.backends[backend.0]
            .duration
            .get_or_init(|| duration.with_label_values(&[upstream, backend.1]))
    }

    /// `limpet_affinity_total{upstream, outcome}`.
    pub fn affinity(
        &self,
        affinity: &IntCounterVec,
        upstream: &str,
        outcome: Outcome,
    ) -> &IntCounter {
        let i = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.affinity[i].get_or_init(|| affinity.with_label_values(&[upstream, outcome.as_str()]))
    }
}
