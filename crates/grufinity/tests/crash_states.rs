//! States a crash (`kill -9`, power loss of the process) can leave a run in, and that every
//! reader and a resume must cope with. Found by benches/crash_campaign.py.

mod common;

use std::path::{Path, PathBuf};

use common::cpu;
use grufinity::model::quant::WeightDtype;
use grufinity::run::RunDir;
use grufinity::train::{train, TrainConfig};
use grufinity::Loaded;

struct Sandbox(PathBuf);

impl Sandbox {
    fn new(name: &str) -> Self {
        let dir = common::sandbox(&format!("crash-{name}"));
        Sandbox(dir)
    }

    fn config(&self, max_steps: u64, resume: Option<&Path>) -> TrainConfig {
        TrainConfig { save_every: 2, max_steps: Some(max_steps), resume: resume.map(|p| p.display().to_string()), ..common::tiny_run(&self.0) }
    }

    fn checkpoints(&self) -> PathBuf {
        self.0.join("runs").join("r").join("checkpoints")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn step_of(ckpt: &Path) -> u64 {
    let text = std::fs::read_to_string(ckpt.join("trainer.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["step"].as_u64().unwrap()
}

#[test]
fn a_run_whose_links_are_missing_or_dangling_still_loads_and_resumes() {
    let sb = Sandbox::new("links");
    let run = sb.0.join("runs").join("r");
    train(sb.config(4, None), &mut |_| true).unwrap();
    let ckpts = sb.checkpoints();
    for (case, last) in [("no links", None), ("`last` dangling", Some("step-99"))] {
        // A kill after a checkpoint was renamed into place and before `last` pointed at it
        // (on a run's first checkpoint there is no `last` at all).
        let _ = std::fs::remove_file(ckpts.join("last"));
        let _ = std::fs::remove_file(ckpts.join("best"));
        if let Some(target) = last {
            std::os::unix::fs::symlink(target, ckpts.join("last")).unwrap();
        }
        let newest = RunDir::new(&run).checkpoints().unwrap().last().unwrap().step;
        let loaded = Loaded::load(&run, &cpu(), WeightDtype::F32).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(loaded.trainer.step, newest, "{case}: loads the newest complete checkpoint");
        let outcome = train(sb.config(newest + 1, Some(&run)), &mut |_| true).unwrap_or_else(|e| panic!("{case}: {e}"));
        assert_eq!(outcome.step, newest + 1, "{case}: resumed from the newest complete checkpoint");
        assert_eq!(step_of(&ckpts.join("last")), newest + 1, "{case}: `last` is pointed again");
    }
}
