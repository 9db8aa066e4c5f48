//! Picks a backend for a request without a valid pin (`least-requests`, `round-robin`,
//! `random`, `least-sessions`, all weighted; least-requests is power of two choices on
//! requests in flight, its candidates drawn in weighted round-robin order;
//! least-sessions the fewest active sessions per unit of weight), and the ip-hash
//! key of a client address (the key's backend is looked up in [`crate::hash_ring`]).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::backend::Backend;
use crate::config::Balance;

/// The policy state for new sessions of one upstream.
#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    /// Smooth weighted round-robin order, precomputed (nginx's algorithm).
    rr_order: Vec<usize>,
    rr_next: AtomicUsize,
    slow_start: Duration,
}

impl Balancer {
    pub fn new(policy: Balance, backends: &[Backend], slow_start: Duration) -> Self {
        Balancer {
            policy,
            rr_order: smooth_round_robin(backends),
            rr_next: AtomicUsize::new(fastrand::usize(..backends.len().max(1))),
            slow_start,
        }
    }

    /// A ready backend for a new session, skipping `exclude`; `None` when none is ready.
    pub fn pick(&self, backends: &[Backend], exclude: &[usize]) -> Option<usize> {
        let eligible = |i: usize| !exclude.contains(&i) && backends[i].state.is_ready();
        match self.policy {
            Balance::RoundRobin => self.round_robin(backends, eligible),
            Balance::Random => self.weighted_random(backends, eligible),
            Balance::LeastRequests => self.least_requests(backends, eligible),
            Balance::LeastSessions => {
                let chosen = self.least_sessions(backends, eligible);
                if let Some(i) = chosen {
                    backends[i].state.sessions.assigned();
                }
                chosen
            }
        }
    }

    fn effective_weight(&self, backend: &Backend) -> f64 {
        backend.weight as f64 * backend.state.ramp(self.slow_start)
    }

    fn round_robin(&self, backends: &[Backend], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.rr_order.len();
        let start = self.rr_next.fetch_add(1, Relaxed);
        for step in 0..len {
            let i = self.rr_order[(start + step) % len];
            if !eligible(i) {
                continue;
            }
            // A backend in slow start takes its turn only with its ramp's probability.
            let ramp = backends[i].state.ramp(self.slow_start);
            if ramp >= 1.0 || fastrand::f64() < ramp {
                // The next pick starts after this one: starting at the
                // skipped slot's neighbour again would give that neighbour
                // (often the skipped backend's replica) the skipped one's
                // share too, 2:1 over the others.
                if step > 0 {
                    self.rr_next.fetch_add(step, Relaxed);
                }
                return Some(i);
            }
        }
        (0..backends.len()).find(|&i| eligible(i))
    }

    fn weighted_random(
        &self,
        backends: &[Backend],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let total: f64 = (0..backends.len())
            .filter(|&i| eligible(i))
            .map(|i| self.effective_weight(&backends[i]))
            .sum();
        if total <= 0.0 {
            return None;
        }
        let mut point = fastrand::f64() * total;
        let mut last = None;
        for i in (0..backends.len()).filter(|&i| eligible(i)) {
            point -= self.effective_weight(&backends[i]);
            last = Some(i);
            if point < 0.0 {
                return Some(i);
            }
        }
        last
    }

    /// Power of two choices on requests in flight per unit of weight. The two
    /// candidates are the next two distinct backends in smooth weighted round-robin
    /// order (the cursor moves by one per pick), and a tie goes to the first: with
    /// little concurrency every backend ties at zero and the policy is exactly
    /// weighted round-robin, so shares follow the weights. Ties are not broken by a
    /// lifetime request count: that would send every new session to a backend added
    /// by a reload (or back from a long outage) until it caught up with the others.
    fn least_requests(
        &self,
        backends: &[Backend],
        eligible: impl Fn(usize) -> bool + Copy,
    ) -> Option<usize> {
        let a = self.round_robin(backends, eligible)?;
        let len = self.rr_order.len();
        let next = self.rr_next.load(Relaxed);
        let b = (0..len)
            .map(|step| self.rr_order[(next + step) % len])
            .find(|&i| i != a && eligible(i));
        let Some(b) = b else {
            return Some(a);
        };
        let load = |i: usize| {
            backends[i].state.in_flight.load(Relaxed) as f64 / self.effective_weight(&backends[i])
        };
        if load(b) < load(a) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

impl Balancer {
    /// The fewest active sessions per unit of weight (slow start included);
    /// among equals the fewest requests in flight per unit of weight, then the
    /// first from a cursor that moves by one per pick. Every eligible backend
    /// is compared (O(N)): after a failover, the replica that took a dead
    /// backend's sessions gets no new ones until the others have as many. The
    /// pick counts at once in the backend's estimate, so a burst of new clients
    /// spreads (and follows the weights) before the sketch has seen them.
    fn least_sessions(
        &self,
        backends: &[Backend],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let len = backends.len();
        let start = self.rr_next.fetch_add(1, Relaxed);
        let mut best: Option<(usize, f64, f64)> = None;
        for step in 0..len {
            let i = (start + step) % len;
            if !eligible(i) {
                // As in round-robin: ties go from after the skipped ones,
                // not to their neighbour twice.
                if best.is_none() {
                    self.rr_next.fetch_add(1, Relaxed);
                }
                continue;
            }
            let weight = self.effective_weight(&backends[i]);
            let state = &backends[i].state;
            let sessions = state.active_sessions() as f64 / weight;
            let requests = state.in_flight.load(Relaxed) as f64 / weight;
            let better = match best {
                None => true,
                Some((_, s, r)) => sessions < s || (sessions == s && requests < r),
            };
            if better {
                best = Some((i, sessions, requests));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

/// The order in which smooth weighted round-robin visits the backends over one cycle
/// (weights 5,1,1 give a a b a c a a, not a a a a a b c).
fn smooth_round_robin(backends: &[Backend]) -> Vec<usize> {
    let total: i64 = backends.iter().map(|b| b.weight as i64).sum();
    let mut current = vec![0i64; backends.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, b) in current.iter_mut().zip(backends) {
            *c += b.weight as i64;
        }
        let Some(best) = (0..backends.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

/// FNV-1a, 64 bit: a fixed, documented hash so that every instance agrees.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: spreads every input bit over the output.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ip-hash key of a client address.
pub fn ip_key(ip: std::net::IpAddr) -> u64 {
    let ip = match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        std::net::IpAddr::V4(v4) => mix64(fnv1a(&v4.octets())),
        std::net::IpAddr::V6(v6) => mix64(fnv1a(&v6.octets())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendState;
    use std::sync::Arc;

    fn backends(weights: &[u32]) -> Vec<Backend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let addr: std::net::SocketAddr = format!("127.0.0.1:{}", 9000 + i).parse().unwrap();
                Backend {
                    name: format!("app{}", i + 1).into(),
                    addr: crate::config::BackendAddr::Ip(addr),
                    addr_text: addr.to_string(),
                    weight: w,
                    replica: None,
                    route: format!("app{}", i + 1),
                    send_proxy: false,
                    tls: None,
                    state: Arc::new(BackendState::new(Some(addr))),
                }
            })
            .collect()
    }

    #[test]
    fn smooth_round_robin_interleaves_by_weight() {
        let order = smooth_round_robin(&backends(&[5, 1, 1]));
        assert_eq!(order, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_requests_is_weighted_round_robin_when_idle_and_avoids_the_busy() {
        let b = backends(&[1, 2, 3]);
        let balancer = Balancer::new(Balance::LeastRequests, &b, Duration::ZERO);
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            counts[balancer.pick(&b, &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
        // A lifetime count does not matter; requests in flight do.
        b[0].state.requests.store(1_000_000, Relaxed);
        b[2].state.in_flight.store(50, Relaxed);
        let mut counts = [0usize; 3];
        for _ in 0..600 {
            counts[balancer.pick(&b, &[]).unwrap()] += 1;
        }
        assert!(counts[0] >= 100, "{counts:?}");
        assert!(counts[2] < 100, "{counts:?}");
    }

    /// A backend that cannot take a pick (down, excluded) gives its turns to
    /// all the others alike: the one after it in the order took them all
    /// (2:1 over the rest), and that one is often its replica, which takes
    /// its pinned clients too.
    #[test]
    fn a_skipped_backend_s_turns_are_shared_by_the_others() {
        for policy in [
            Balance::RoundRobin,
            Balance::LeastRequests,
            Balance::LeastSessions,
        ] {
            let b = backends(&[1, 1, 1]);
            let balancer = Balancer::new(policy, &b, Duration::ZERO);
            let mut counts = [0usize; 3];
            for _ in 0..90 {
                counts[balancer.pick(&b, &[0]).unwrap()] += 1;
            }
            assert_eq!(counts[0], 0, "{policy:?} {counts:?}");
            assert!(counts[1].abs_diff(counts[2]) <= 2, "{policy:?} {counts:?}");
        }
        let b = backends(&[2, 1, 1]);
        let balancer = Balancer::new(Balance::RoundRobin, &b, Duration::ZERO);
        let mut counts = [0usize; 3];
        for _ in 0..120 {
            counts[balancer.pick(&b, &[1]).unwrap()] += 1;
        }
        assert_eq!(counts, [80, 0, 40], "weights 2:1 of the two left");
    }

    #[test]
    fn least_sessions_fills_the_emptiest_and_follows_the_weights() {
        let b = backends(&[1, 1, 1]);
        let balancer = Balancer::new(Balance::LeastSessions, &b, Duration::ZERO);
        // app1 absorbed 100 sessions (a failover).
        for id in 1..=100u64 {
            b[0].state.answered(mix64(id));
        }
        let mut counts = [0usize; 3];
        for _ in 0..180 {
            counts[balancer.pick(&b, &[]).unwrap()] += 1;
        }
        // app2 and app3 catch up (about 100 each) before app1 gets any.
        assert!(counts[0] <= 10, "{counts:?}");
        assert!(counts[1].abs_diff(counts[2]) <= 1, "{counts:?}");

        let b = backends(&[1, 2]);
        let balancer = Balancer::new(Balance::LeastSessions, &b, Duration::ZERO);
        let mut counts = [0usize; 2];
        for _ in 0..300 {
            counts[balancer.pick(&b, &[]).unwrap()] += 1;
        }
        assert!(counts[0].abs_diff(100) <= 1, "{counts:?}");
    }

    #[test]
    fn least_sessions_breaks_ties_by_requests_in_flight() {
        let b = backends(&[1, 1, 1]);
        let balancer = Balancer::new(Balance::LeastSessions, &b, Duration::ZERO);
        b[0].state.in_flight.store(5, Relaxed);
        b[1].state.in_flight.store(3, Relaxed);
        assert_eq!(balancer.pick(&b, &[]), Some(2));
        // Now app3 has one session more than the others.
        assert_ne!(balancer.pick(&b, &[]), Some(2));
    }
}
