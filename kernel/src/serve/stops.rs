//! Stop strings: the filter between a generation's text and its requester that ends the answer
//! when the text contains one of the request's stop strings, holding back only the text that
//! may still turn out to begin one, and never sending the stop string itself.

#![forbid(unsafe_code)]

use alloc::{string::String, vec::Vec};

/// A request's stop strings and the text held back while it may begin one of them.
///
/// Invariant: `held` never contains a whole stop string, and every suffix of it that is kept is
/// a proper prefix of some stop string; so what was sent plus `held` is the answer so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
}

impl StopFilter {
    /// A filter for `stops` (empty strings are ignored; no stops passes all text through).
    pub fn new(stops: Vec<String>) -> Self {
        let stops = stops.into_iter().filter(|stop| !stop.is_empty()).collect();
        Self { stops, held: String::new() }
    }

    /// Whether the filter has no stop strings.
    pub fn is_empty(&self) -> bool {
        self.stops.is_empty()
    }

    /// Takes the next `piece` of the answer and appends to `out` the text that can be sent now.
    /// Returns true when the answer now contains a stop string: `out` then got the text before
    /// the occurrence that was complete first (the one ending first; of two ending at the same
    /// place, the one starting first), and nothing after it may be sent. Which text is sent
    /// does not depend on how the answer was cut into pieces.
    pub fn push(&mut self, piece: &str, out: &mut String) -> bool {
        if self.stops.is_empty() {
            out.push_str(piece);
            return false;
        }
        self.held.push_str(piece);
        let first = self.stops.iter().filter_map(|stop| complete_at(&self.held, stop)).min();
        if let Some((_, index)) = first {
            out.push_str(&self.held[..index]);
            self.held.clear();
            return true;
        }
        let keep_from = self.first_partial_start();
        out.push_str(&self.held[..keep_from]);
        self.held.drain(..keep_from);
        false
    }

    /// The answer ended without a stop string: appends the text held back to `out`.
    pub fn finish(&mut self, out: &mut String) {
        out.push_str(&self.held);
        self.held.clear();
    }

    /// Where the longest suffix of `held` that begins a stop string starts (`held.len()` when
    /// none does).
    fn first_partial_start(&self) -> usize {
        self.held
            .char_indices()
            .map(|(index, _)| index)
            .find(|&index| {
                let tail = &self.held[index..];
                self.stops.iter().any(|stop| stop.starts_with(tail))
            })
            .unwrap_or(self.held.len())
    }
}

/// Where `stop` first occurs in `text`: the end of that occurrence, then its start.
fn complete_at(text: &str, stop: &str) -> Option<(usize, usize)> {
    text.find(stop).map(|start| (start + stop.len(), start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use proptest::prelude::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut filter = StopFilter::new(stops.iter().map(|stop| stop.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            if filter.push(piece, &mut out) {
                return (out, true);
            }
        }
        filter.finish(&mut out);
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_holds_back_only_prefixes() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "b\n", "\nc"]), ("a\nb".into(), true));
        assert_eq!(run(&["xyz"], &["ab", "xy"]), ("abxy".into(), false), "held text is sent at the end");
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&["b", "abc"], &["zab"]), ("za".into(), true), "the earliest occurrence wins");
        assert_eq!(run(&["b\na", "\n"], &["b\n", "a"]), ("b".into(), true), "the first one complete wins");
        assert_eq!(run(&["b\na", "\n"], &["b\na"]), ("b".into(), true), "whatever the pieces");

        let mut filter = StopFilter::new(["STOP".to_string()].into());
        let mut out = String::new();
        assert!(!filter.push("go S", &mut out));
        assert_eq!(out, "go ", "only the possible start of the stop string waits");
        assert!(!filter.push("TO", &mut out));
        assert_eq!(out, "go ");
        assert!(filter.push("P?", &mut out));
        assert_eq!(out, "go ", "the stop string is never sent");
    }

    #[test]
    fn multibyte_text_is_cut_on_character_boundaries() {
        assert_eq!(run(&["é!"], &["café", "!x"]), ("caf".into(), true));
        assert_eq!(run(&["日本"], &["今日", "は"]), ("今日は".into(), false));
    }

    proptest! {
        /// Whatever the pieces, the filter sends exactly the answer up to the first complete stop
        /// string (or all of it), as one search over the whole text would.
        #[test]
        fn the_filter_matches_a_search_over_the_whole_text(
            pieces in proptest::collection::vec("[ab\n]{0,4}", 0..12),
            stops in proptest::collection::vec("[ab\n]{1,3}", 0..4),
        ) {
            let whole: String = pieces.concat();
            // A naive search, independent of `complete_at`: the first end at which some stop
            // string is complete, and there the longest one (the one starting first).
            let first = (1..=whole.len()).find_map(|end| {
                let longest = stops.iter().filter(|stop| whole[..end].ends_with(stop.as_str())).map(String::len).max()?;
                Some(end - longest)
            });
            let expected = match first {
                Some(index) => (whole[..index].to_string(), true),
                None => (whole.clone(), false),
            };
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let stops: Vec<&str> = stops.iter().map(String::as_str).collect();
            prop_assert_eq!(run(&stops, &pieces), expected);
        }
    }
}
