//! The ip-hash lookup: a Maglev table (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016) built with the snapshot,
//! so that mapping a client's key to its backend is one multiplication and one
//! load, whatever the number of backends.
//!
//! The table has a prime number of slots: 65,537 ([`MIN_SIZE`]) for up to 1,024
//! backends, then the first prime above 10 times as many for each 10 times as
//! many backends (655,373 up to 10,240). The size changes only at those steps,
//! never with one backend more or less: a change of size remaps every key, so
//! a config that crosses a step (1,024 -> 1,025 backends) moves most clients
//! once. Each backend has its own permutation of the
//! slots (an offset and a step from hashes of its name), and the backends take
//! turns claiming the next free slot of their permutation until the table is
//! full. A key picks the slot `key * size >> 64`.
//!
//! - **Weights**: a backend of weight `w` takes `w / max_weight` turns per round
//!   (the weighted variant Envoy uses), so its share of the slots, and of the
//!   keys, is its share of the total weight to within a few slots.
//! - **Even**: equal weights get slot counts that differ by at most one, so
//!   every backend's share is within 1/64 of its due (1/1,000 or better up to
//!   65 backends).
//! - **Disruption**: removing one of N backends moves all of its keys and a
//!   few others: the survivors' permutations meet a little differently.
//!   Measured over whole tables (`tests` below): 0.07% of all keys for 4
//!   backends, 0.3% for 20, 0.6% for 100 and for 1,000; adding a backend is the mirror
//!   image. Rendezvous hashing, which limpet used before, moved none of the
//!   others' keys but cost O(N) per request (249 ns at 20 backends).
//! - **Stable**: the table depends only on the backends' names and weights,
//!   not on their order in the file, so every instance with the same backends
//!   maps a key to the same backend, and reordering the config moves nothing.
//! - **Cost**: building is O(size · log size) expected, about 1 ms for 1,000
//!   backends (bench/RESULTS.md); a lookup is ~8 ns whatever the number of
//!   backends. The table is 4 bytes a slot (256 KiB up to 1,024 backends).

/// The smallest table: a prime well above the backend counts of most upstreams,
/// so that shares are even and few keys move at a change.
pub const MIN_SIZE: usize = 65_537;

/// The backends [`MIN_SIZE`] serves: at least 64 slots each. Each step of the
/// table size is 10 times the previous for 10 times as many backends.
const MIN_SIZE_BACKENDS: usize = 1_024;

/// A key-to-backend lookup table for one upstream.
#[derive(Debug)]
pub struct Maglev {
    /// The backend index (as given to [`Maglev::new`]) of each slot.
    slots: Box<[u32]>,
}

impl Maglev {
    /// The table over `backends`, each a (name, weight), in the caller's order
    /// (the lookup answers that index); `None` without backends or weights. A
    /// name should appear once: a repeated one claims slots for each.
    pub fn new<'a>(backends: impl IntoIterator<Item = (&'a str, u32)>) -> Option<Maglev> {
        let backends: Vec<(&str, u32)> = backends.into_iter().collect();
        let max_weight = backends.iter().map(|b| b.1).max().filter(|&w| w > 0)?;
        let size = table_size(backends.len());
        let mut turns: Vec<Turns> = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.1 > 0)
            .map(|(index, &(name, weight))| Turns::new(index, name, weight, max_weight, size))
            .collect();
        // Turns go in name order, so the table does not depend on the file's order.
        turns.sort_by(|a, b| backends[a.index].0.cmp(backends[b.index].0));
        Some(Maglev {
            slots: fill(size, &mut turns),
        })
    }

    /// The index of the backend `key` maps to. `key` should be well mixed (as
    /// [`crate::balancer::ip_key`] is): the slot is taken from its high bits.
    pub fn get(&self, key: u64) -> usize {
        let slot = ((key as u128 * self.slots.len() as u128) >> 64) as usize;
        self.slots[slot] as usize
    }

    /// The number of slots.
    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// The backend index of every slot, in slot order.
    pub fn slots(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.slots.iter().map(|&b| b as usize)
    }
}

/// One backend's walk through its permutation of the slots, and when its next
/// turn is due.
struct Turns {
    index: usize,
    weight: u64,
    /// The round from which its next turn is due, times `max_weight`.
    due: u64,
    max_weight: u64,
    slot: usize,
    step: usize,
}

impl Turns {
    fn new(index: usize, name: &str, weight: u32, max_weight: u32, size: usize) -> Turns {
        let h = crate::balancer::fnv1a(name.as_bytes());
        let offset = crate::balancer::mix64(h ^ 0x6d61_676c_6576_6f66) % size as u64;
        let step = crate::balancer::mix64(h ^ 0x6d61_676c_6576_736b) % (size as u64 - 1) + 1;
        Turns {
            index,
            weight: weight as u64,
            due: max_weight as u64,
            max_weight: max_weight as u64,
            slot: offset as usize,
            step: step as usize,
        }
    }

    /// Whether this backend takes a turn in `round` (from 1); if so, counts it.
    fn takes(&mut self, round: u64) -> bool {
        if round * self.weight < self.due {
            return false;
        }
        self.due += self.max_weight;
        true
    }

    /// Claims the next free slot of this backend's permutation. `size` is prime and
    /// `0 < step < size`, so the walk visits every slot: a free one is found while
    /// the table is not full.
    fn claim(&mut self, slots: &mut [u32], size: usize) {
        loop {
            let slot = self.slot;
            self.slot += self.step;
            if self.slot >= size {
                self.slot -= size;
            }
            if slots[slot] == FREE {
                slots[slot] = self.index as u32;
                return;
            }
        }
    }
}

const FREE: u32 = u32::MAX;

/// Rounds of turns until every slot is claimed.
fn fill(size: usize, turns: &mut [Turns]) -> Box<[u32]> {
    let mut slots = vec![FREE; size].into_boxed_slice();
    let mut filled = 0;
    let mut round = 1u64;
    while filled < size {
        for t in turns.iter_mut() {
            if filled < size && t.takes(round) {
                t.claim(&mut slots, size);
                filled += 1;
            }
        }
        round += 1;
    }
    slots
}

/// The number of slots for `backends`: a step of a fixed ladder, so that adding
/// or removing a backend keeps the size (except across a step).
fn table_size(backends: usize) -> usize {
    let (mut size, mut serves) = (MIN_SIZE, MIN_SIZE_BACKENDS);
    while backends > serves && size < usize::MAX / 100 {
        size = next_prime(size.saturating_mul(10) - 10);
        serves = serves.saturating_mul(10);
    }
    size
}

fn next_prime(from: usize) -> usize {
    (from.max(2)..)
        .find(|&n| is_prime(n))
        .expect("there is always a larger prime")
}

fn is_prime(n: usize) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    (3..)
        .step_by(2)
        .take_while(|d| d * d <= n)
        .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests;
