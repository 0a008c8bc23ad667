//! Summaries that benchmark console tests print from the kernel's output.

/// One measured hot-swap, as the kernel's `swap stall:` line reports it (all times in ms):
/// the stall (the most swap work a round did minus the loading rounds' median swap work; also
/// from the gaps: the longest gap between token rounds minus the loading rounds' median gap)
/// and the load's throughput tax (the loading rounds' median gap over the idle median).
#[derive(Clone, Debug, PartialEq)]
pub struct SwapCost {
    /// The stall, ms.
    pub stall_ms: f64,
    /// The most swap work one round did, ms.
    pub longest_work_ms: f64,
    /// Median swap work of the rounds that carried load work, ms.
    pub loading_work_ms: f64,
    /// The longest gap minus the loading rounds' median gap, ms.
    pub gap_stall_ms: f64,
    /// Longest gap between rounds during the swap, ms.
    pub longest_ms: f64,
    /// Median gap of the rounds that carried load work, ms.
    pub loading_ms: f64,
    /// Rounds that carried load work.
    pub load_rounds: usize,
    /// Background work of those rounds in all, ms.
    pub load_work_ms: f64,
    /// The throughput tax: loading rounds' median gap over the idle median.
    pub tax: f64,
    /// Median gap of the recent rounds less their swap work, ms.
    pub idle_ms: f64,
    /// Work of the round that swapped the model in, ms.
    pub swap_round_ms: f64,
    /// The longest single unit of the swap's work, ms, and what it was.
    pub longest_unit: (f64, String),
    /// Rounds of tokens the swap spanned.
    pub rounds: usize,
}

impl SwapCost {
    /// The longest gap minus the idle rounds' median, ms: what earlier figures called the
    /// swap's pause (the stall plus one loading round's slice).
    pub fn pause_ms(&self) -> f64 {
        self.longest_ms - self.idle_ms
    }
}

/// Splits `text` at the first `separator`, parsing what comes before it.
fn field<'text, T: std::str::FromStr>(text: &'text str, separator: &str) -> Option<(T, &'text str)> {
    let (value, rest) = text.split_once(separator)?;
    Some((value.trim().parse().ok()?, rest))
}

/// The swap of one `swap stall: ...` line, if `line` holds one.
fn swap_cost(line: &str) -> Option<SwapCost> {
    let rest = line.split("swap stall: ").nth(1)?;
    let (stall_ms, rest) = field(rest, " ms (most swap work in a round ")?;
    let (longest_work_ms, rest) = field(rest, " ms, loading rounds' median ")?;
    let (loading_work_ms, rest) = field(rest, " ms); by gaps ")?;
    let (gap_stall_ms, rest) = field(rest, " ms (longest ")?;
    let (longest_ms, rest) = field(rest, " ms, loading rounds' median ")?;
    let (loading_ms, rest) = field(rest, " ms); load ")?;
    let (load_rounds, rest) = field(rest, " rounds, ")?;
    let (load_work_ms, rest) = field(rest, " ms of work, tax ")?;
    let (tax, rest) = field(rest, "x (idle median ")?;
    let (idle_ms, rest) = field(rest, " ms); swap round ")?;
    let (swap_round_ms, rest) = field(rest, " ms; longest unit ")?;
    let (unit_ms, rest) = field(rest, " ms (")?;
    let (what, rest) = rest.rsplit_once("); ")?;
    let rounds = rest.trim_end().strip_suffix(" rounds")?.parse().ok()?;
    Some(SwapCost {
        stall_ms,
        longest_work_ms,
        loading_work_ms,
        gap_stall_ms,
        longest_ms,
        loading_ms,
        load_rounds,
        load_work_ms,
        tax,
        idle_ms,
        swap_round_ms,
        longest_unit: (unit_ms, what.to_string()),
        rounds,
    })
}

/// Every swap of `output`'s `swap stall: ...` lines.
pub fn swap_costs(output: &str) -> Vec<SwapCost> {
    output.lines().filter_map(swap_cost).collect()
}

/// The value at quantile `q` (0-1) of sorted `values`, by the nearest-rank rule.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `value` of every swap, sorted.
fn sorted(swaps: &[SwapCost], value: impl Fn(&SwapCost) -> f64) -> Vec<f64> {
    let mut values: Vec<f64> = swaps.iter().map(value).collect();
    values.sort_by(f64::total_cmp);
    values
}

/// Two markdown tables of the swaps in `output`. The stall: its median, p99 and max, the
/// loading rounds' swap work (median), the stall by gaps (median and max), the swap round's
/// work (max) and the longest single unit of work over all the swaps. The load: the idle and
/// loading rounds' median gaps and the tax (medians over the swaps), the tax's max, the
/// load's rounds and work, the rounds a swap spanned, and the longest gap minus the idle
/// median (what earlier figures called the pause).
pub fn swap_cost_tables(output: &str) -> Vec<String> {
    let swaps = swap_costs(output);
    let stalls = sorted(&swaps, |swap| swap.stall_ms);
    let median = |value: fn(&SwapCost) -> f64| quantile(&sorted(&swaps, value), 0.5);
    let max = |value: fn(&SwapCost) -> f64| sorted(&swaps, value).last().copied().unwrap_or(f64::NAN);
    let longest_unit = swaps
        .iter()
        .map(|swap| &swap.longest_unit)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or_else(|| "-".to_string(), |(milliseconds, what)| format!("{milliseconds:.3} ms ({what})"));
    vec![
        "| swaps | stall median | stall p99 | stall max | loading round's swap work (median) | stall by gaps (median, max) | swap round's work (max) | longest unit |"
            .to_string(),
        "|---:|---:|---:|---:|---:|---:|---:|---|".to_string(),
        format!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms, {:.3} ms | {:.3} ms | {longest_unit} |",
            swaps.len(),
            quantile(&stalls, 0.5),
            quantile(&stalls, 0.99),
            stalls.last().copied().unwrap_or(f64::NAN),
            median(|swap| swap.loading_work_ms),
            median(|swap| swap.gap_stall_ms),
            max(|swap| swap.gap_stall_ms),
            max(|swap| swap.swap_round_ms),
        ),
        String::new(),
        "| idle round (median) | loading round (median) | tax median | tax max | load rounds (median) | load work (median) | rounds per swap (median) | longest gap - idle median (median, max) |"
            .to_string(),
        "|---:|---:|---:|---:|---:|---:|---:|---:|".to_string(),
        format!(
            "| {:.3} ms | {:.3} ms | {:.3}x | {:.3}x | {} | {:.3} ms | {} | {:.3} ms, {:.3} ms |",
            median(|swap| swap.idle_ms),
            median(|swap| swap.loading_ms),
            median(|swap| swap.tax),
            max(|swap| swap.tax),
            median(|swap| swap.load_rounds as f64),
            median(|swap| swap.load_work_ms),
            median(|swap| swap.rounds as f64),
            median(SwapCost::pause_ms),
            max(SwapCost::pause_ms),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_swap_stall_lines_and_summarises_them() {
        let output = "noise\r\n\
            swap stall: 0.010 ms (most swap work in a round 0.260 ms, loading rounds' median 0.250 ms); by gaps 0.010 ms (longest 2.260 ms, loading rounds' median 2.250 ms); load 4 rounds, 1.000 ms of work, tax 1.125x (idle median 2.000 ms); swap round 0.005 ms; longest unit 0.042 ms (add merges (64)); 6 rounds\r\n\
            x swap stall: 3.000 ms (most swap work in a round 3.250 ms, loading rounds' median 0.250 ms); by gaps 8.000 ms (longest 10.250 ms, loading rounds' median 2.250 ms); load 6 rounds, 4.250 ms of work, tax 1.500x (idle median 1.500 ms); swap round 0.007 ms; longest unit 3.000 ms (read 4 KiB); 8 rounds\r\n\
            swap stall: bad ms (most swap work in a round 2.000 ms\r\n";
        let swaps = swap_costs(output);
        assert_eq!(swaps.len(), 2);
        assert_eq!(
            swaps[0],
            SwapCost {
                stall_ms: 0.01,
                longest_work_ms: 0.26,
                loading_work_ms: 0.25,
                gap_stall_ms: 0.01,
                longest_ms: 2.26,
                loading_ms: 2.25,
                load_rounds: 4,
                load_work_ms: 1.0,
                tax: 1.125,
                idle_ms: 2.0,
                swap_round_ms: 0.005,
                longest_unit: (0.042, "add merges (64)".to_string()),
                rounds: 6,
            }
        );
        assert!((swaps[1].pause_ms() - 8.75).abs() < 1e-9);
        let tables = swap_cost_tables(output);
        assert_eq!(
            tables[2],
            "| 2 | 0.010 ms | 3.000 ms | 3.000 ms | 0.250 ms | 0.010 ms, 8.000 ms | 0.007 ms | 3.000 ms (read 4 KiB) |"
        );
        assert_eq!(
            tables[6],
            "| 1.500 ms | 2.250 ms | 1.125x | 1.500x | 4 | 1.000 ms | 6 | 0.260 ms, 8.750 ms |"
        );
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
