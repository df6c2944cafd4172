//! Training: the TBPTT loop, AdamW, schedules, evaluation, checkpoints and metrics.

pub mod checkpoint;
pub mod config;
pub mod eval;
pub mod fused_optim;
pub mod optim;
pub mod params;
pub mod trainer;

pub use config::TrainConfig;
pub use optim::Schedule;
pub use trainer::{train, Event, Outcome, TrainerState};
