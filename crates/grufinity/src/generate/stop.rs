//! Stop strings: watching the decoded output for them, and holding back the bytes that might
//! still turn out to begin one.

/// Watches the decoded output for stop strings and tells how much of it is safe to show: the
/// bytes that can no longer turn out to be the start of a stop string.
#[derive(Clone, Debug, Default)]
pub(super) struct StopMatcher {
    stops: Vec<Vec<u8>>,
    pub(super) text: Vec<u8>,
    shown: usize,
    /// Start of the stop string, once one was generated.
    pub(super) cut: Option<usize>,
}

impl StopMatcher {
    pub(super) fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().map(|s| s.as_bytes().to_vec()).collect(), ..Default::default() }
    }

    /// Appends `bytes`; with `check`, looks for a stop string ending inside them.
    pub(super) fn push(&mut self, bytes: &[u8], check: bool) {
        let from = self.text.len();
        self.text.extend_from_slice(bytes);
        if check && !bytes.is_empty() {
            self.cut = find_stop(&self.stops, &self.text, from);
        }
    }

    /// End of the text that cannot become part of a stop string any more.
    pub(super) fn safe_end(&self) -> usize {
        let n = self.text.len();
        let mut hold = 0;
        for s in &self.stops {
            for k in (hold + 1..s.len().min(n + 1)).rev() {
                if self.text[n - k..] == s[..k] {
                    hold = k;
                    break;
                }
            }
        }
        n - hold
    }

    /// The bytes not shown yet up to `end`, marking them shown.
    pub(super) fn take(&mut self, end: usize) -> &[u8] {
        let from = self.shown.min(end);
        self.shown = self.shown.max(end);
        &self.text[from..end]
    }

    /// The output: the text up to the stop string.
    pub(super) fn output(mut self) -> Vec<u8> {
        if let Some(cut) = self.cut {
            self.text.truncate(cut);
        }
        self.text
    }
}

/// Start of the first stop string in `text` that ends after byte `from`, if any.
pub(super) fn find_stop(stops: &[Vec<u8>], text: &[u8], from: usize) -> Option<usize> {
    stops
        .iter()
        .filter(|s| s.len() <= text.len())
        .filter_map(|s| {
            let lo = (from + 1).saturating_sub(s.len());
            (lo..=text.len() - s.len()).find(|&start| text[start..start + s.len()] == s[..])
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_possible_starts() {
        let mut m = StopMatcher::new(&["END".to_string(), "\n\n".to_string()]);
        let mut shown = Vec::new();
        for b in b"abE".iter() {
            m.push(&[*b], true);
            assert!(m.cut.is_none());
            let end = m.safe_end();
            shown.extend_from_slice(m.take(end));
        }
        assert_eq!(shown, b"ab"); // "E" might begin "END"
        m.push(b"x", true);
        let end = m.safe_end();
        shown.extend_from_slice(m.take(end));
        assert_eq!(shown, b"abEx");
        m.push(b"EN", true);
        assert_eq!(m.safe_end(), 4);
        m.push(b"D!", true); // a multi-byte piece that contains the stop string
        assert_eq!(m.cut, Some(4));
        assert_eq!(m.output(), b"abEx");
    }

    #[test]
    fn stop_found_only_when_checked() {
        let mut m = StopMatcher::new(&["ab".to_string()]);
        m.push(b"a", false);
        m.push(b"b", false);
        assert_eq!(m.cut, None);
        m.push(b"c", true); // the earlier "ab" does not end inside the new bytes
        assert_eq!(m.cut, None);
        assert_eq!(find_stop(&[b"ab".to_vec()], b"xxab", 3), Some(2));
        assert_eq!(find_stop(&[b"ab".to_vec(), b"b".to_vec()], b"xxab", 3), Some(2));
        assert_eq!(find_stop(&[b"zz".to_vec()], b"xxab", 3), None);
    }
}
