//! Summaries that benchmark console tests print from the kernel's output.

/// One measured swap: the longest gap between token rounds while the new model was staged and
/// the median gap before it, in ms, as the kernel's `swap pause:` line reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct SwapPause {
    /// Longest gap between rounds during the load and swap, ms.
    pub longest_ms: f64,
    /// Median gap between rounds with no load running, ms.
    pub median_ms: f64,
    /// The longest single unit of the swap's background work, ms, and what it was, when the
    /// line says.
    pub longest_unit: Option<(f64, String)>,
    /// Rounds of tokens the swap spanned, when the line says.
    pub rounds: Option<usize>,
}

impl SwapPause {
    /// The pause: longest gap minus median gap, ms.
    pub fn pause_ms(&self) -> f64 {
        self.longest_ms - self.median_ms
    }
}

/// Every `swap pause: longest gap between tokens X ms, median Y ms, ...` line of `output`.
pub fn swap_pauses(output: &str) -> Vec<SwapPause> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.split("swap pause: longest gap between tokens ").nth(1)?;
            let (longest, rest) = rest.split_once(" ms, median ")?;
            let (median, rest) = rest.split_once(" ms")?;
            let longest_unit = rest.split_once("; longest unit ").and_then(|(_, unit)| {
                let (milliseconds, what) = unit.split_once(" ms (")?;
                let (what, _) = what.rsplit_once(')')?;
                Some((milliseconds.trim().parse().ok()?, what.to_string()))
            });
            let rounds = rest
                .rsplit_once("; ")
                .and_then(|(_, last)| last.trim_end().strip_suffix(" rounds")?.parse().ok());
            Some(SwapPause {
                longest_ms: longest.trim().parse().ok()?,
                median_ms: median.trim().parse().ok()?,
                longest_unit,
                rounds,
            })
        })
        .collect()
}

/// The value at quantile `q` (0-1) of sorted `values`, by the nearest-rank rule.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A markdown table of the swap pauses in `output` (count, median, p99 and max pause, the
/// median gap between rounds they are measured against, the median count of rounds a swap
/// spanned, and the longest single unit of background work over all the swaps).
pub fn swap_pause_table(output: &str) -> Vec<String> {
    let swaps = swap_pauses(output);
    let mut pauses: Vec<f64> = swaps.iter().map(SwapPause::pause_ms).collect();
    pauses.sort_by(f64::total_cmp);
    let mut medians: Vec<f64> = swaps.iter().map(|swap| swap.median_ms).collect();
    medians.sort_by(f64::total_cmp);
    let longest_unit = swaps
        .iter()
        .filter_map(|swap| swap.longest_unit.as_ref())
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map_or_else(|| "-".to_string(), |(milliseconds, what)| format!("{milliseconds:.3} ms ({what})"));
    let mut rounds: Vec<f64> =
        swaps.iter().filter_map(|swap| swap.rounds).map(|rounds| rounds as f64).collect();
    rounds.sort_by(f64::total_cmp);
    let rounds = if rounds.is_empty() { "-".to_string() } else { format!("{}", quantile(&rounds, 0.5)) };
    vec![
        "| swaps | pause median | pause p99 | pause max | gap between rounds (median) | rounds per swap (median) | longest unit |"
            .to_string(),
        "|---:|---:|---:|---:|---:|---:|---|".to_string(),
        format!(
            "| {} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {rounds} | {longest_unit} |",
            swaps.len(),
            quantile(&pauses, 0.5),
            quantile(&pauses, 0.99),
            pauses.last().copied().unwrap_or(f64::NAN),
            quantile(&medians, 0.5),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_swap_pause_lines_and_summarises_them() {
        let output = "noise\r\nswap pause: longest gap between tokens 3.500 ms, median 3.000 ms, pause 0.500 ms\r\n\
                      x swap pause: longest gap between tokens 4.000 ms, median 2.000 ms, pause 2.000 ms; longest unit 0.042 ms (add merges); 17 rounds\r\n\
                      swap pause: longest gap between tokens bad ms, median 2.000 ms\r\n";
        let swaps = swap_pauses(output);
        assert_eq!(swaps.len(), 2);
        assert_eq!(
            swaps[1],
            SwapPause {
                longest_ms: 4.0,
                median_ms: 2.0,
                longest_unit: Some((0.042, "add merges".to_string())),
                rounds: Some(17),
            }
        );
        assert_eq!(swaps[0].pause_ms(), 0.5);
        assert_eq!((swaps[0].longest_unit.as_ref(), swaps[0].rounds), (None, None));
        let table = swap_pause_table(output);
        assert_eq!(
            table[2],
            "| 2 | 0.500 ms | 2.000 ms | 2.000 ms | 2.000 ms | 17 | 0.042 ms (add merges) |"
        );
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
