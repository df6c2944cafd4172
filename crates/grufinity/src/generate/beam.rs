//! Beam search over the recurrent state: each hypothesis is one row of the state.

use super::sampling::{argmax, log_sum_exp, process, SamplingConfig};
use super::stop::find_stop;
use super::batch::Stepper;
use super::{Decoder, Finish, Generation};
use crate::data::Tokenizer;

impl Decoder<'_> {
    /// Beam search from the current state: `cfg.beams` hypotheses, each on its own row of the
    /// recurrent state (rows reordered with [`State::select_rows`] as hypotheses are extended),
    /// scored by the sum of their log-probabilities after the repetition controls, divided by
    /// length^`length_penalty`. The greedy continuation is tracked on one more row, so the
    /// result never scores below greedy decoding. Ends when no live hypothesis can beat the
    /// best finished one (exact without a length penalty) or at `max_new_tokens`.
    ///
    /// [`run`](Self::run) calls this when `cfg.beams > 1`; any width works here (1 is greedy
    /// search). `cfg` is assumed valid; stop strings need `tokenizer`.
    pub fn beam_search(&mut self, cfg: &SamplingConfig, tokenizer: Option<&Tokenizer>) -> Generation {
        #[derive(Clone)]
        struct Hyp {
            tokens: Vec<u32>,
            score: f64,
            log_prob: f64,
            text: Vec<u8>,
            cut: Option<usize>,
            greedy: bool,
        }
        let vocab = self.config.vocab_size;
        let k = cfg.beams;
        let stops: Vec<Vec<u8>> = cfg.stop.iter().map(|s| s.as_bytes().to_vec()).collect();
        let norm = |h: &Hyp| {
            if cfg.length_penalty == 0.0 {
                h.score
            } else {
                h.score / (h.tokens.len().max(1) as f64).powf(cfg.length_penalty)
            }
        };
        let start = (self.state.clone(), self.last_logits.clone(), self.history.clone());
        let first = self.last_logits.clone().unwrap_or_else(|| vec![0.0; vocab]);
        let empty = Hyp { tokens: vec![], score: 0.0, log_prob: 0.0, text: vec![], cut: None, greedy: false };
        let mut alive = vec![empty.clone(), Hyp { greedy: true, ..empty }];
        let mut logits = vec![first.clone(), first];
        let mut steps = Stepper::new(self.model, self.host, &self.device, self.state.clone().select_rows(&[0, 0]));
        let mut finished: Vec<(Hyp, Finish)> = Vec::new();
        // Extends `h` by `tok`; returns it and how it finished, if it did.
        let extend = |h: &Hyp, tok: u32, lp: f64, raw: f64| -> (Hyp, Option<Finish>) {
            let mut n = h.clone();
            n.tokens.push(tok);
            n.score += lp;
            n.log_prob += raw;
            let may_end = n.tokens.len() >= cfg.min_new_tokens;
            if cfg.eos == Some(tok) {
                return (n, Some(Finish::Eos));
            }
            let from = n.text.len();
            if let Some(t) = tokenizer {
                n.text.extend(t.decode(&[tok]));
            }
            if may_end && !stops.is_empty() && n.text.len() > from {
                n.cut = find_stop(&stops, &n.text, from);
                if n.cut.is_some() {
                    return (n, Some(Finish::Stop));
                }
            }
            (n, None)
        };
        for _ in 0..cfg.max_new_tokens {
            let mut candidates: Vec<(f64, usize, u32, f64, f64)> = Vec::new();
            let mut greedy_next = None;
            for (i, h) in alive.iter().enumerate() {
                let raw = &logits[i];
                let lse_raw = log_sum_exp(raw.iter().map(|&x| x as f64));
                let processed = process(raw, cfg, &self.history, &h.tokens, h.tokens.len());
                let lse = log_sum_exp(processed.iter().copied());
                let lp: Vec<f64> = processed.iter().map(|x| x - lse).collect();
                if h.greedy {
                    let t = argmax(&lp);
                    greedy_next = Some((i, t as u32, lp[t], raw[t] as f64 - lse_raw));
                    continue;
                }
                let mut order: Vec<usize> = (0..lp.len()).filter(|&t| lp[t].is_finite()).collect();
                let take = (2 * k).min(order.len());
                if take < order.len() {
                    order.select_nth_unstable_by(take, |&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
                    order.truncate(take);
                }
                for t in order {
                    candidates.push((h.score + lp[t], i, t as u32, lp[t], raw[t] as f64 - lse_raw));
                }
            }
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut next = Vec::new();
            let mut parents = Vec::new();
            for (rank, &(_, parent, tok, lp, raw)) in candidates.iter().enumerate() {
                if next.len() == k {
                    break;
                }
                match extend(&alive[parent], tok, lp, raw) {
                    (h, Some(f)) => {
                        if rank < k {
                            finished.push((h, f));
                        }
                    }
                    (h, None) => {
                        next.push(h);
                        parents.push(parent);
                    }
                }
            }
            if let Some((parent, tok, lp, raw)) = greedy_next {
                match extend(&alive[parent], tok, lp, raw) {
                    (h, Some(f)) => finished.push((h, f)),
                    (h, None) => {
                        next.push(h);
                        parents.push(parent);
                    }
                }
            }
            alive = next;
            if alive.is_empty() {
                break;
            }
            let best_finished = finished.iter().map(|(h, _)| norm(h)).fold(f64::NEG_INFINITY, f64::max);
            let best_alive = alive.iter().map(norm).fold(f64::NEG_INFINITY, f64::max);
            if best_alive <= best_finished {
                alive.clear();
                break;
            }
            let tokens: Vec<u32> = alive.iter().map(|h| h.tokens[h.tokens.len() - 1]).collect();
            steps.select_rows(&parents);
            logits = steps.step(&tokens, vocab).unwrap_or_else(|_| vec![vec![0.0; vocab]; tokens.len()]);
        }
        finished.extend(alive.into_iter().map(|h| (h, Finish::Length)));
        let best = finished
            .into_iter()
            .reduce(|a, b| if norm(&b.0) > norm(&a.0) { b } else { a });
        let (hyp, finish) = best.unwrap_or((
            Hyp { tokens: vec![], score: 0.0, log_prob: 0.0, text: vec![], cut: None, greedy: false },
            Finish::Length,
        ));
        // Leave the decoder after the chosen tokens.
        (self.state, self.last_logits, self.history) = start;
        self.feed(&hyp.tokens);
        let mut text = hyp.text;
        if let Some(cut) = hyp.cut {
            text.truncate(cut);
        }
        Generation { tokens: hyp.tokens, text, finish, log_prob: hyp.log_prob }
    }
}
