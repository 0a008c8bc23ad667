//! A test hook of the SD driver: read commands that fail at random blocks, as a worn card's
//! would. It is compiled in always but does nothing until armed, and only the card's own
//! `tessera.cfg` arms it (`sd_read_faults = N`, read at boot and armed once the boot model is
//! in): no console input can. The QEMU tests of failed loads use it.

use kernel::hil::boundary::SplitMix64;

/// The seed of the fault pattern: a card's runs fail at the same reads.
pub const FAULT_SEED: u64 = 0x5D_FA17;

/// Read faults: each read command fails with probability 1/`one_in`, at a block drawn from
/// the ones it asks for.
#[derive(Clone, Debug)]
pub struct ReadFaults {
    random: SplitMix64,
    one_in: u64,
    /// Read commands failed so far.
    pub injected: u64,
    /// The block the last failure was placed at.
    pub last_block: Option<u64>,
}

impl ReadFaults {
    /// Faults in one read command of `one_in` (at least 1: every read fails), seeded with
    /// [`FAULT_SEED`].
    pub fn new(one_in: u32) -> Self {
        Self {
            random: SplitMix64::new(FAULT_SEED),
            one_in: u64::from(one_in.max(1)),
            injected: 0,
            last_block: None,
        }
    }

    /// Whether the read of `count` blocks from `first` fails, and at which block.
    pub fn strike(&mut self, first: u64, count: u64) -> Option<u64> {
        if count == 0 || self.random.below(self.one_in) != 0 {
            return None;
        }
        let block = first + self.random.below(count);
        self.injected += 1;
        self.last_block = Some(block);
        Some(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_land_inside_the_read_at_the_armed_rate() {
        let mut every = ReadFaults::new(1);
        for first in [0u64, 100, 4096] {
            let block = every.strike(first, 8).unwrap();
            assert!((first..first + 8).contains(&block));
        }
        assert_eq!(every.strike(5, 0), None, "an empty read cannot fail");
        let mut some = ReadFaults::new(4);
        let failed = (0..4000).filter(|&index| some.strike(index * 8, 8).is_some()).count();
        assert!((800..1200).contains(&failed), "about one read in four fails: {failed}");
        assert_eq!(some.injected, failed as u64);
        let mut again = ReadFaults::new(4);
        let repeat = (0..4000).filter(|&index| again.strike(index * 8, 8).is_some()).count();
        assert_eq!(repeat, failed, "seeded: the same reads fail");
    }
}
