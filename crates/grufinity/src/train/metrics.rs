//! `metrics.jsonl` and `metrics.csv`: one line per step, evaluation and skipped step, appended
//! as the run goes; and `samples.txt`.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use super::events::Event;
use crate::error::{Error, Result};
use crate::files::write_file_atomically;
use crate::run::RunDir;

const CSV_HEADER: &str = "event,step,tokens,lr,loss,grad_norm,tokens_per_sec,elapsed,val_loss,val_bpb,val_ppl\n";

/// The metrics files of a run, open for appending.
pub struct Metrics {
    jsonl: File,
    csv: File,
}

impl Metrics {
    /// Opens the files of `run`, dropping lines past `step` (left by a run that went on after
    /// its last checkpoint) so that a resumed run never repeats a step.
    pub fn open(run: &RunDir, step: u64) -> Result<Self> {
        let jsonl_path = run.root.join("metrics.jsonl");
        let csv_path = run.root.join("metrics.csv");
        let keep = |line: &str, step_of: &dyn Fn(&str) -> Option<u64>| step_of(line).is_some_and(|s| s <= step);
        let jsonl_step = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok()?.get("step")?.as_u64();
        let csv_step = |l: &str| l.split(',').nth(1)?.parse().ok();
        let filter = |path: &Path, header: &str, step_of: &dyn Fn(&str) -> Option<u64>| -> Result<()> {
            let old = std::fs::read_to_string(path).unwrap_or_default();
            let mut out = String::from(header);
            out.extend(old.lines().filter(|l| keep(l, step_of)).map(|l| format!("{l}\n")));
            write_file_atomically(path, out.as_bytes())
        };
        filter(&jsonl_path, "", &jsonl_step)?;
        filter(&csv_path, CSV_HEADER, &csv_step)?;
        let open = |p: &Path| std::fs::OpenOptions::new().append(true).open(p).map_err(|e| Error::io(p, e));
        Ok(Self { jsonl: open(&jsonl_path)?, csv: open(&csv_path)? })
    }

    /// Appends `event` if it is a step, an evaluation or a skipped step.
    pub fn record(&mut self, event: &Event) {
        let line = match event {
            Event::Step { step, tokens, lr, loss, grad_norm, tokens_per_sec, elapsed, .. } => {
                format!("step,{step},{tokens},{lr:.6e},{loss:.6},{grad_norm:.6},{tokens_per_sec:.1},{elapsed:.3},,,\n")
            }
            Event::Eval { step, tokens, val_loss, val_bpb, val_ppl, elapsed, .. } => {
                format!("eval,{step},{tokens},,,,,{elapsed:.3},{val_loss:.6},{val_bpb:.6},{val_ppl:.4}\n")
            }
            Event::Skipped { step, tokens, lr, loss, grad_norm, elapsed, .. } => {
                format!("skip,{step},{tokens},{lr:.6e},{loss:.6},{grad_norm:.6},,{elapsed:.3},,,\n")
            }
            _ => return,
        };
        let _ = self.csv.write_all(line.as_bytes());
        if let Ok(json) = serde_json::to_string(event) {
            let _ = writeln!(self.jsonl, "{json}");
        }
    }
}

/// Appends the sample of the evaluation at `step` to the run's `samples.txt`.
pub fn append_sample(run: &RunDir, step: u64, val_loss: f64, text: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(run.samples_file()) {
        let _ = writeln!(f, "=== step {step} (val loss {val_loss:.4})\n{text}\n");
    }
}
