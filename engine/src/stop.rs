//! Stop strings over streamed text: text is released only once it can no longer be the start
//! of a stop string, and the generation ends where one appears (the stop string itself is
//! never emitted).

/// Watches streamed text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopStrings {
    /// A watcher for `stops` (empty strings are ignored).
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new(), stopped: false }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds a piece of text; returns the text that is safe to emit now. After a stop string
    /// appears, returns the text before it and nothing ever after.
    pub fn push(&mut self, piece: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(piece);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        let keep = self.longest_partial_suffix();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        out
    }

    /// The text still held back (it ended without completing a stop string).
    pub fn finish(&mut self) -> String {
        if self.stopped { String::new() } else { std::mem::take(&mut self.held) }
    }

    /// Bytes at the end of the held text that begin some stop string (on a char boundary).
    fn longest_partial_suffix(&self) -> usize {
        let h = &self.held;
        let mut best = 0;
        for s in &self.stops {
            for (i, _) in h.char_indices() {
                let tail = &h[i..];
                if tail.len() <= best {
                    break;
                }
                if s.starts_with(tail) {
                    best = tail.len();
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut w = StopStrings::new(stops.iter().map(|s| s.to_string()));
        let mut out: String = pieces.iter().map(|p| w.push(p)).collect();
        out.push_str(&w.finish());
        (out, w.stopped())
    }

    #[test]
    fn stops_across_pieces_and_never_emits_the_stop() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), true));
        assert_eq!(run(&["\n\n"], &["a\n", "\nb"]), ("a".into(), true));
        assert_eq!(run(&["xy", "b"], &["aab", "xy"]), ("aa".into(), true));
    }

    #[test]
    fn releases_held_text_that_turns_out_not_to_stop() {
        let mut w = StopStrings::new(["END".to_string()]);
        assert_eq!(w.push("hi E"), "hi ");
        assert_eq!(w.push("X"), "EX");
        assert_eq!(w.push("EN"), "");
        assert_eq!(w.finish(), "EN");
        assert!(!w.stopped());
    }

    #[test]
    fn multibyte_text_and_no_stops() {
        assert_eq!(run(&["é!"], &["caf", "é", "é!x"]), ("café".into(), true));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
    }
}
