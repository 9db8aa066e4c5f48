//! The table's promises over whole tables (every slot is an equal share of the
//! key space): even shares, weights, order independence, and how many keys a
//! change of backends moves.

use proptest::prelude::*;

use super::*;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("app{i}")).collect()
}

fn table(backends: &[(String, u32)]) -> Maglev {
    Maglev::new(backends.iter().map(|(n, w)| (n.as_str(), *w))).unwrap()
}

fn equal(names: &[String]) -> Vec<(String, u32)> {
    names.iter().map(|n| (n.clone(), 1)).collect()
}

/// The backend name of every slot.
fn by_name<'a>(t: &Maglev, backends: &'a [(String, u32)]) -> Vec<&'a str> {
    t.slots().map(|i| backends[i].0.as_str()).collect()
}

fn counts(t: &Maglev, n: usize) -> Vec<usize> {
    let mut c = vec![0; n];
    t.slots().for_each(|i| c[i] += 1);
    c
}

/// Slots (out of `before.len()`) whose backend changed although it was not `removed`.
fn others_moved(before: &[&str], after: &[&str], removed: &str) -> usize {
    before
        .iter()
        .zip(after)
        .filter(|(b, a)| b != a && **b != removed)
        .count()
}

#[test]
fn sizes_are_primes_on_a_ladder_of_tens() {
    assert!(is_prime(65_537) && is_prime(2) && is_prime(3) && !is_prime(1) && !is_prime(91));
    assert_eq!(table_size(1), 65_537);
    assert_eq!(table_size(1_024), 65_537);
    assert_eq!(table_size(1_025), 655_373);
    assert_eq!(table_size(10_240), 655_373);
    let next = table_size(10_241);
    assert!(
        next > 6_553_700 && next < 6_554_000 && is_prime(next),
        "{next}"
    );
    assert_eq!(table(&equal(&names(1000))).size(), 65_537);
    assert!(Maglev::new([]).is_none());
}

#[test]
fn keys_spread_over_the_whole_table() {
    let t = table(&equal(&names(3)));
    let first = t.slots().next().unwrap();
    let last = t.slots().last().unwrap();
    assert_eq!(t.get(0), first);
    assert_eq!(t.get(u64::MAX), last);
}

#[test]
fn equal_weights_get_slot_counts_within_one() {
    for n in [1, 2, 3, 20, 100, 1000] {
        let c = counts(&table(&equal(&names(n))), n);
        let (min, max) = (c.iter().min().unwrap(), c.iter().max().unwrap());
        assert!(max - min <= 1, "{n} backends: {min}..{max}");
    }
}

#[test]
fn shares_follow_the_weights() {
    let backends: Vec<(String, u32)> = names(4).into_iter().zip([1, 2, 3, 10]).collect();
    let t = table(&backends);
    let c = counts(&t, 4);
    for (i, (_, w)) in backends.iter().enumerate() {
        let due = t.size() as f64 * *w as f64 / 16.0;
        assert!((c[i] as f64 - due).abs() <= 4.0, "{c:?}");
    }
}

#[test]
fn the_order_of_the_backends_does_not_matter() {
    let backends: Vec<(String, u32)> = names(50).into_iter().zip((1..4).cycle()).collect();
    let mut reversed = backends.clone();
    reversed.reverse();
    let (a, b) = (table(&backends), table(&reversed));
    assert_eq!(by_name(&a, &backends), by_name(&b, &reversed));
}

#[test]
fn removing_one_backend_moves_its_keys_and_few_others() {
    // (backends, the most slots of other backends that may move, in 1/10,000ths
    // of the table; measured 6, 31, 56 and 60).
    for (n, bound) in [(4, 20), (20, 50), (100, 80), (1000, 90)] {
        let all = equal(&names(n));
        let removed = all[n / 2].0.clone();
        let rest: Vec<_> = all.iter().filter(|b| b.0 != removed).cloned().collect();
        let (t_all, t_rest) = (table(&all), table(&rest));
        let (before, after) = (by_name(&t_all, &all), by_name(&t_rest, &rest));
        assert!(after.iter().all(|b| *b != removed));
        let size = before.len();
        let on_removed = before.iter().filter(|b| **b == removed).count();
        assert!(on_removed.abs_diff(size / n) <= 1, "{n}: {on_removed}");
        let moved = others_moved(&before, &after, &removed);
        let per_10k = moved * 10_000 / size;
        eprintln!("{n} backends: {moved} of {size} other slots moved ({per_10k}/10,000)");
        assert!(
            per_10k <= bound,
            "{n} backends: {per_10k}/10,000 of other keys moved"
        );
    }
}

#[test]
fn adding_a_backend_takes_its_share_and_moves_few_others() {
    let before_set = equal(&names(10));
    let mut after_set = before_set.clone();
    after_set.push(("new".to_string(), 1));
    let (a, b) = (table(&before_set), table(&after_set));
    let (before, after) = (by_name(&a, &before_set), by_name(&b, &after_set));
    let taken = after.iter().filter(|n| **n == "new").count();
    assert!(taken.abs_diff(a.size() / 11) <= 1, "{taken}");
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(x, y)| x != y && **y != "new")
        .count();
    assert!(
        moved * 10_000 / a.size() <= 40,
        "{moved} slots moved between old backends"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any set of 2-40 backends with weights 1-5, one removed: its keys move,
    /// at most 1% of the table moves between the others, and every share stays
    /// within 0.5% of the table of its weight's due.
    #[test]
    fn a_removal_moves_little_beyond_the_removed_share(
        weights in proptest::collection::vec(1u32..=5, 2..40),
        which in any::<proptest::sample::Index>(),
    ) {
        let all: Vec<(String, u32)> = names(weights.len()).into_iter().zip(weights).collect();
        let removed = all[which.index(all.len())].0.clone();
        let rest: Vec<_> = all.iter().filter(|b| b.0 != removed).cloned().collect();
        let (t_all, t_rest) = (table(&all), table(&rest));
        let (before, after) = (by_name(&t_all, &all), by_name(&t_rest, &rest));
        let moved = others_moved(&before, &after, &removed);
        prop_assert!(moved * 100 <= before.len(), "{} of {} moved", moved, before.len());
        let total: u32 = all.iter().map(|b| b.1).sum();
        for (c, (_, w)) in counts(&t_all, all.len()).iter().zip(&all) {
            let due = t_all.size() as f64 * *w as f64 / total as f64;
            prop_assert!((*c as f64 - due).abs() <= t_all.size() as f64 * 0.005, "{} vs {}", c, due);
        }
    }
}
