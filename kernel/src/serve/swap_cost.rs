//! What a hot-swap costs the rounds of tokens it spans: its stall and its load's throughput tax.
//!
//! A background load works between rounds for a slice of time (see `swap.rs`), so while it
//! runs every round is longer by about that slice. Each round's swap work is timed: the units
//! of the staged load, the swap itself, the buffers of the replaced model freed, and the
//! lookup that starts a load. Two figures say what a swap costs:
//! - the **stall**: the most swap work any round did minus the median swap work of the rounds
//!   that carried load work, i.e. how much longer the worst round was than a loading round
//!   because of the swap (a unit of work that overran the slice, the lookup, the round that
//!   swapped the model in, a buffer freed): what a reader of the stream sees as a hitch. It is
//!   taken from the work, not from the rounds' gaps, because a gap also holds the pass, which
//!   changes with the batch (a prompt chunk of 16 rows when a request joins, a finished
//!   sequence's KV published) and grows with the sequences' length; the gap-based figure, the
//!   longest gap minus the loading rounds' median gap, is kept beside it;
//! - the **throughput tax**: the loading rounds' median gap over the median gap of the recent
//!   rounds less their swap work (the rounds before the swap, and the swap's own rounds without
//!   their swap work), with the number of rounds the load took: what generation pays for the
//!   load, spread evenly.
//!
//! Earlier figures called the longest gap minus that idle median the swap's pause;
//! [`SwapCost::pause_ns`] keeps it, for comparison (it is about the stall plus one slice).

#![forbid(unsafe_code)]

use alloc::{collections::VecDeque, vec::Vec};

/// Gaps between rounds the idle median is taken over: the most recent ones, since a gap grows
/// with the sequence's length.
pub const RECENT_GAPS: usize = 16;

/// What a round's background work was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoundWork {
    /// None.
    #[default]
    Nothing,
    /// Units of a staged load.
    Load,
    /// The staged model swapped in (a pointer exchange, and nothing else that round).
    Swap,
    /// Buffers of a replaced model freed.
    Free,
}

/// One round's gap, the background work done in it, and what that was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Round {
    gap_ns: u64,
    work_ns: u64,
    work: RoundWork,
}

/// One swap's figures, from the rounds of tokens between its `/load` and the replaced model
/// freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapCost {
    /// Rounds the swap spanned.
    pub rounds: usize,
    /// The most swap work one of them did, ns.
    pub longest_work_ns: u64,
    /// Median swap work of the rounds that carried load work (0 when none did), ns.
    pub loading_work_ns: u64,
    /// The longest gap between rounds among them, ns.
    pub longest_gap_ns: u64,
    /// Median gap of the rounds that carried load work (the idle median when none did), ns.
    pub loading_gap_ns: u64,
    /// Median gap of the most recent rounds less their swap work (the rounds before the swap
    /// have none), ns.
    pub idle_gap_ns: u64,
    /// Rounds that carried load work: the load's duration in rounds.
    pub load_rounds: usize,
    /// Background work those rounds did in all, ns.
    pub load_work_ns: u64,
    /// Background work of the round that swapped the model in, ns (0 when the swap happened
    /// while nothing was generating).
    pub swap_work_ns: u64,
}

impl SwapCost {
    /// The stall: how much more swap work the worst round did than the median loading
    /// round, ns.
    pub fn stall_ns(&self) -> u64 {
        self.longest_work_ns.saturating_sub(self.loading_work_ns)
    }

    /// The longest gap minus the loading rounds' median gap, ns: the stall as the gaps show
    /// it, with the changes of the pass (a prompt chunk, a finished sequence, longer
    /// sequences) that the swap did not cause.
    pub fn gap_stall_ns(&self) -> u64 {
        self.longest_gap_ns.saturating_sub(self.loading_gap_ns)
    }

    /// The throughput tax: the loading rounds' median gap over the idle rounds' (1.0 when
    /// there is nothing to compare).
    pub fn tax(&self) -> f64 {
        if self.idle_gap_ns == 0 || self.load_rounds == 0 {
            return 1.0;
        }
        self.loading_gap_ns as f64 / self.idle_gap_ns as f64
    }

    /// The longest gap minus the idle median: what earlier figures called the pause (about
    /// the stall plus a loading round's slice), ns.
    pub fn pause_ns(&self) -> u64 {
        self.longest_gap_ns.saturating_sub(self.idle_gap_ns)
    }
}

/// The gaps between rounds of tokens: those of the swap under way, with the work each round
/// did, and the recent ones that the swap is compared with and the load's slice is cut from.
#[derive(Debug, Default)]
pub struct SwapGaps {
    /// Rounds of the swap under way.
    rounds: Vec<Round>,
    /// The most recent gaps less their swap work, ns.
    recent: VecDeque<u64>,
    /// What the current round's background work is.
    work: RoundWork,
    /// Swap work done in the current round outside its background work, ns.
    outside_ns: u64,
    /// The load's slice, fixed for the swap under way, ns.
    slice_ns: Option<u64>,
    /// The figures of the last swap reported.
    last: Option<SwapCost>,
}

impl SwapGaps {
    /// No gaps yet.
    pub fn new() -> Self {
        Self {
            rounds: Vec::new(),
            recent: VecDeque::with_capacity(RECENT_GAPS),
            work: RoundWork::Nothing,
            outside_ns: 0,
            slice_ns: None,
            last: None,
        }
    }

    /// Notes what the current round's background work is (the round is recorded by
    /// [`SwapGaps::record`]).
    pub fn note_work(&mut self, work: RoundWork) {
        self.work = work;
    }

    /// Counts `ns` of swap work done in the current round outside its background work (a
    /// load's lookup, started from the console).
    pub fn add_outside_work(&mut self, ns: u64) {
        self.outside_ns = self.outside_ns.saturating_add(ns);
    }

    /// Records the round that just ended: `gap_ns` since the previous one, `background_ns` of
    /// it background work, `swap_under_way` whether a swap was (then the round is one of the
    /// swap's).
    pub fn record(&mut self, gap_ns: u64, background_ns: u64, swap_under_way: bool) {
        let work = core::mem::take(&mut self.work);
        let work_ns = background_ns.saturating_add(core::mem::take(&mut self.outside_ns)).min(gap_ns);
        if swap_under_way {
            self.rounds.push(Round { gap_ns, work_ns, work });
        }
        push_recent(&mut self.recent, gap_ns - work_ns);
    }

    /// Forgets the rounds of the swap under way (its load was dropped).
    pub fn clear(&mut self) {
        self.rounds.clear();
        self.work = RoundWork::Nothing;
        self.outside_ns = 0;
        self.slice_ns = None;
    }

    /// The time a round may give the swap's work: 1/`fraction` of the recent median gap less
    /// swap work, at least `floor_ns`. While a swap is under way (`swap_under_way`) it is
    /// fixed as soon as [`RECENT_GAPS`] gaps are known, so every loading round gets the same
    /// slice: taken afresh each round, it would follow the median as the rounds before the
    /// load (a longer sequence's, a prompt's) leave the window, and loading rounds would differ
    /// by an eighth of that.
    pub fn slice_ns(&mut self, floor_ns: u64, fraction: u64, swap_under_way: bool) -> u64 {
        if !swap_under_way {
            self.slice_ns = None;
        }
        if let Some(slice) = self.slice_ns {
            return slice;
        }
        let slice = (self.recent_median_ns() / fraction.max(1)).max(floor_ns);
        if swap_under_way && self.recent.len() == RECENT_GAPS {
            self.slice_ns = Some(slice);
        }
        slice
    }

    /// Whether rounds of a swap were recorded since the last [`SwapGaps::finish`].
    pub fn has_rounds(&self) -> bool {
        !self.rounds.is_empty()
    }

    /// Median of the recent gaps less their swap work, ns (0 before any round): what a round
    /// takes without a load, for cutting the load's slice.
    pub fn recent_median_ns(&self) -> u64 {
        median(self.recent.iter().copied().collect()).unwrap_or(0)
    }

    /// The figures of the swap whose rounds were recorded, if any, and starts over.
    pub fn finish(&mut self) -> Option<SwapCost> {
        if self.rounds.is_empty() {
            return None;
        }
        let rounds = core::mem::take(&mut self.rounds);
        self.slice_ns = None;
        let idle_gap_ns = self.recent_median_ns();
        let loading: Vec<&Round> = rounds.iter().filter(|round| round.work == RoundWork::Load).collect();
        let cost = SwapCost {
            rounds: rounds.len(),
            longest_work_ns: rounds.iter().map(|round| round.work_ns).max().unwrap_or(0),
            loading_work_ns: median(loading.iter().map(|round| round.work_ns).collect()).unwrap_or(0),
            longest_gap_ns: rounds.iter().map(|round| round.gap_ns).max().unwrap_or(0),
            loading_gap_ns: median(loading.iter().map(|round| round.gap_ns).collect()).unwrap_or(idle_gap_ns),
            idle_gap_ns,
            load_rounds: loading.len(),
            load_work_ns: loading.iter().map(|round| round.work_ns).sum(),
            swap_work_ns: rounds
                .iter()
                .filter(|round| round.work == RoundWork::Swap)
                .map(|round| round.work_ns)
                .max()
                .unwrap_or(0),
        };
        self.last = Some(cost);
        Some(cost)
    }

    /// The figures of the last swap finished.
    pub fn last(&self) -> Option<SwapCost> {
        self.last
    }
}

/// Appends `gap_ns` to `gaps`, keeping the last [`RECENT_GAPS`].
fn push_recent(gaps: &mut VecDeque<u64>, gap_ns: u64) {
    if gaps.len() == RECENT_GAPS {
        gaps.pop_front();
    }
    gaps.push_back(gap_ns);
}

/// The median of `values` (the upper one of an even count), or `None` when there are none.
fn median(mut values: Vec<u64>) -> Option<u64> {
    values.sort_unstable();
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Records `count` rounds of `gap_ns` with `work_ns` of `work` in each.
    fn rounds(gaps: &mut SwapGaps, count: usize, gap_ns: u64, work_ns: u64, work: RoundWork) {
        for _ in 0..count {
            gaps.note_work(work);
            gaps.record(gap_ns, work_ns, work != RoundWork::Nothing);
        }
    }

    #[test]
    fn a_load_that_keeps_to_its_slice_taxes_rounds_but_does_not_stall_them() {
        let mut gaps = SwapGaps::new();
        rounds(&mut gaps, 20, 400 * MS, 0, RoundWork::Nothing);
        assert_eq!((gaps.finish(), gaps.recent_median_ns()), (None, 400 * MS));
        // The lookup that starts the load, from the console, in the first loading round.
        gaps.add_outside_work(MS / 10);
        rounds(&mut gaps, 1, 450 * MS + MS / 10, 50 * MS, RoundWork::Load);
        rounds(&mut gaps, 9, 450 * MS, 50 * MS, RoundWork::Load);
        // The last loading round ends early; the swap round does only the exchange.
        rounds(&mut gaps, 1, 420 * MS, 20 * MS, RoundWork::Load);
        rounds(&mut gaps, 1, 400 * MS + 10_000, 10_000, RoundWork::Swap);
        rounds(&mut gaps, 2, 400 * MS + 50_000, 50_000, RoundWork::Free);
        assert!(gaps.has_rounds());
        let cost = gaps.finish().unwrap();
        assert_eq!(
            cost,
            SwapCost {
                rounds: 14,
                longest_work_ns: 50 * MS + MS / 10,
                loading_work_ns: 50 * MS,
                longest_gap_ns: 450 * MS + MS / 10,
                loading_gap_ns: 450 * MS,
                idle_gap_ns: 400 * MS,
                load_rounds: 11,
                load_work_ns: 520 * MS + MS / 10,
                swap_work_ns: 10_000,
            }
        );
        assert_eq!(
            (cost.stall_ns(), cost.gap_stall_ns(), cost.pause_ns()),
            (MS / 10, MS / 10, 50 * MS + MS / 10)
        );
        assert!((cost.tax() - 1.125).abs() < 1e-9);
        assert_eq!((gaps.last(), gaps.has_rounds(), gaps.finish()), (Some(cost), false, None));
        // The slice is cut from gaps less their swap work: loading rounds count as 400 ms.
        assert_eq!(gaps.recent_median_ns(), 400 * MS);
    }

    #[test]
    fn a_unit_that_overruns_the_slice_is_the_stall_and_a_longer_pass_is_not() {
        let mut gaps = SwapGaps::new();
        rounds(&mut gaps, 16, 2 * MS, 0, RoundWork::Nothing);
        rounds(&mut gaps, 4, 2 * MS + 250_000, 250_000, RoundWork::Load);
        // A unit that overran the slice by 3 ms.
        rounds(&mut gaps, 1, 5 * MS + 250_000, 3_250_000, RoundWork::Load);
        // A request joined: its prompt chunk makes the pass 8 ms longer.
        rounds(&mut gaps, 1, 10 * MS + 250_000, 250_000, RoundWork::Load);
        rounds(&mut gaps, 1, 2 * MS + 5_000, 5_000, RoundWork::Swap);
        let cost = gaps.finish().unwrap();
        assert_eq!((cost.stall_ns(), cost.load_rounds, cost.rounds), (3 * MS, 6, 7));
        assert_eq!((cost.loading_work_ns, cost.longest_work_ns), (250_000, 3_250_000));
        assert_eq!((cost.loading_gap_ns, cost.idle_gap_ns), (2_250_000, 2 * MS));
        assert_eq!((cost.gap_stall_ns(), cost.pause_ns()), (8 * MS, 8_250_000));
        assert_eq!(cost.load_work_ns, 5 * 250_000 + 3_250_000);
    }

    #[test]
    fn without_rounds_before_it_a_swap_is_compared_with_its_own_rounds_less_their_work() {
        let mut gaps = SwapGaps::new();
        rounds(&mut gaps, 3, 3 * MS, MS, RoundWork::Load);
        rounds(&mut gaps, 1, 2 * MS + 1_000, 1_000, RoundWork::Swap);
        let cost = gaps.finish().unwrap();
        assert_eq!((cost.idle_gap_ns, cost.loading_gap_ns, cost.stall_ns()), (2 * MS, 3 * MS, 0));
        assert!((cost.tax() - 1.5).abs() < 1e-9);
        // A swap whose rounds carried no load work (it was loaded between batches) has no tax.
        rounds(&mut gaps, 2, 2 * MS + 7_000, 7_000, RoundWork::Free);
        let cost = gaps.finish().unwrap();
        assert_eq!((cost.load_rounds, cost.tax(), cost.loading_gap_ns), (0, 1.0, cost.idle_gap_ns));
        assert_eq!((cost.loading_work_ns, cost.stall_ns()), (0, 7_000));
    }

    #[test]
    fn a_swap_keeps_the_slice_it_started_with_once_the_recent_gaps_are_known() {
        let mut gaps = SwapGaps::new();
        // Before any round: the floor, not fixed while fewer than RECENT_GAPS gaps are known.
        assert_eq!(gaps.slice_ns(MS / 4, 8, true), MS / 4);
        rounds(&mut gaps, RECENT_GAPS / 2, 80 * MS, 0, RoundWork::Nothing);
        assert_eq!(gaps.slice_ns(MS / 4, 8, true), 10 * MS);
        rounds(&mut gaps, RECENT_GAPS, 96 * MS, 0, RoundWork::Nothing);
        assert_eq!(gaps.slice_ns(MS / 4, 8, false), 12 * MS);
        // The swap starts: its slice stays while shorter rounds replace the longer ones.
        assert_eq!(gaps.slice_ns(MS / 4, 8, true), 12 * MS);
        rounds(&mut gaps, RECENT_GAPS, 92 * MS, 12 * MS, RoundWork::Load);
        assert_eq!((gaps.recent_median_ns(), gaps.slice_ns(MS / 4, 8, true)), (80 * MS, 12 * MS));
        // The next swap takes its own.
        assert!(gaps.finish().is_some());
        assert_eq!(gaps.slice_ns(MS / 4, 8, true), 10 * MS);
        gaps.clear();
        rounds(&mut gaps, 1, 40 * MS, 0, RoundWork::Nothing);
        assert_eq!(gaps.slice_ns(MS / 4, 8, false), 10 * MS);
        assert_eq!(gaps.slice_ns(MS / 4, 0, false), 80 * MS);
    }

    #[test]
    fn a_dropped_load_leaves_no_figures_and_old_gaps_age_out() {
        let mut gaps = SwapGaps::new();
        gaps.add_outside_work(MS);
        rounds(&mut gaps, 5, 9 * MS, MS, RoundWork::Load);
        gaps.clear();
        assert_eq!(gaps.finish(), None);
        rounds(&mut gaps, RECENT_GAPS, MS, 0, RoundWork::Nothing);
        assert_eq!(gaps.recent_median_ns(), MS);
        // Work is never counted beyond its round's gap.
        gaps.add_outside_work(9 * MS);
        rounds(&mut gaps, 1, 4 * MS, MS, RoundWork::Load);
        let cost = gaps.finish().unwrap();
        assert_eq!((cost.longest_work_ns, cost.idle_gap_ns, cost.tax()), (4 * MS, MS, 4.0));
    }
}
