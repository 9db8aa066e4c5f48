//! The ring's promises, over many keys: shares follow the weights, the order
//! of the backends does not matter, and a change of backends moves only the
//! keys it must (SPEC section 3).

use proptest::prelude::*;

use super::*;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("app{i}")).collect()
}

fn ring(backends: &[(String, u32)]) -> Ring {
    Ring::new(backends.iter().map(|(n, w)| (n.as_str(), *w))).unwrap()
}

fn equal(names: &[String]) -> Vec<(String, u32)> {
    names.iter().map(|n| (n.clone(), 1)).collect()
}

/// Well-mixed keys, as `balancer::ip_key` makes them.
fn keys(n: u64) -> impl Iterator<Item = u64> {
    (0..n).map(mix64)
}

/// The backend name of each of `n` keys.
fn by_name<'a>(r: &Ring, backends: &'a [(String, u32)], n: u64) -> Vec<&'a str> {
    keys(n).map(|k| backends[r.get(k)].0.as_str()).collect()
}

fn shares(r: &Ring, backends: usize, n: u64) -> Vec<f64> {
    let mut c = vec![0u64; backends];
    keys(n).for_each(|k| c[r.get(k)] += 1);
    c.iter().map(|&c| c as f64 / n as f64).collect()
}

#[test]
fn no_backends_no_ring() {
    assert!(Ring::new([]).is_none());
    assert!(Ring::new([("app1", 0)]).is_none());
}

#[test]
fn keys_at_both_ends_of_the_ring_find_a_point() {
    let backends = equal(&names(3));
    let r = ring(&backends);
    for key in [0, 1, u64::MAX - 1, u64::MAX] {
        assert!(r.get(key) < 3);
    }
    // Past the last point, a key wraps to the first.
    let first = r.backends[0] as usize;
    assert_eq!(r.get(u64::MAX), first);
}

#[test]
fn shares_are_even_to_within_a_few_percent() {
    for n in [2, 3, 4, 10, 100] {
        let r = ring(&equal(&names(n)));
        let due = 1.0 / n as f64;
        for (i, share) in shares(&r, n, 400_000).into_iter().enumerate() {
            let off = (share - due).abs() / due;
            assert!(
                off < 0.25,
                "{n} backends: app{} has {share:.4}, due {due:.4}",
                i + 1
            );
        }
    }
}

#[test]
fn shares_follow_the_weights() {
    let backends: Vec<(String, u32)> = names(3).into_iter().zip([1, 2, 5]).collect();
    let r = ring(&backends);
    for (share, due) in shares(&r, 3, 400_000)
        .into_iter()
        .zip([1.0 / 8.0, 2.0 / 8.0, 5.0 / 8.0])
    {
        assert!((share - due).abs() / due < 0.25, "{share:.4} vs {due:.4}");
    }
}

#[test]
fn a_weight_counts_up_to_max_points() {
    assert_eq!(Ring::new([("app1", 1)]).unwrap().points(), POINTS as usize);
    assert_eq!(
        Ring::new([("app1", 3)]).unwrap().points(),
        3 * POINTS as usize
    );
    let heavy = Ring::new([("app1", crate::config::MAX_WEIGHT)]).unwrap();
    assert_eq!(heavy.points(), MAX_POINTS as usize);
}

#[test]
fn the_order_of_the_backends_does_not_matter() {
    let backends = equal(&names(20));
    let mut reversed = backends.clone();
    reversed.reverse();
    let (a, b) = (ring(&backends), ring(&reversed));
    assert_eq!(
        by_name(&a, &backends, 50_000),
        by_name(&b, &reversed, 50_000)
    );
}

#[test]
fn removing_a_backend_moves_only_its_keys() {
    for n in [2, 4, 20, 1000] {
        let all = equal(&names(n));
        let removed = &all[n / 2].0;
        let rest: Vec<(String, u32)> = all.iter().filter(|b| &b.0 != removed).cloned().collect();
        let (before, after) = (
            by_name(&ring(&all), &all, 100_000),
            by_name(&ring(&rest), &rest, 100_000),
        );
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b == removed {
                assert_ne!(a, removed);
                moved += 1;
            } else {
                assert_eq!(b, a, "{n} backends: a key of {b} moved");
            }
        }
        assert!(moved > 0);
    }
}

#[test]
fn an_added_backend_takes_keys_only_for_itself() {
    let ten = equal(&names(10));
    let eleven = equal(&names(11));
    let (before, after) = (
        by_name(&ring(&ten), &ten, 100_000),
        by_name(&ring(&eleven), &eleven, 100_000),
    );
    let mut taken = 0;
    for (b, a) in before.iter().zip(&after) {
        if b != a {
            assert_eq!(*a, "app11");
            taken += 1;
        }
    }
    let share = taken as f64 / 100_000.0;
    assert!((share - 1.0 / 11.0).abs() < 0.25 / 11.0, "{share}");
}

#[test]
fn a_thousand_backends_build_and_spread() {
    let backends = equal(&names(1000));
    let r = ring(&backends);
    assert_eq!(r.points(), 1000 * POINTS as usize);
    let used = shares(&r, 1000, 200_000)
        .iter()
        .filter(|&&s| s > 0.0)
        .count();
    assert_eq!(used, 1000);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Any weighted set: removing any one backend moves only its keys.
    #[test]
    fn a_removal_moves_only_the_removed_keys(
        weights in proptest::collection::vec(1u32..5, 2..12),
        which in any::<proptest::sample::Index>(),
    ) {
        let all: Vec<(String, u32)> = names(weights.len()).into_iter().zip(weights).collect();
        let removed = all[which.index(all.len())].0.clone();
        let rest: Vec<(String, u32)> = all.iter().filter(|b| b.0 != removed).cloned().collect();
        let before = by_name(&ring(&all), &all, 20_000);
        let after = by_name(&ring(&rest), &rest, 20_000);
        for (b, a) in before.iter().zip(&after) {
            prop_assert!(*b == removed || b == a);
        }
    }
}
