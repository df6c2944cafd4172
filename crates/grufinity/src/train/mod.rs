//! Training: the TBPTT loop ([`trainer`]), where a run starts ([`setup`], [`resume`]), AdamW and
//! schedules ([`optim`], [`fused_optim`]), evaluation ([`eval`]), checkpoints ([`checkpoint`]),
//! events and metrics ([`events`], [`metrics`], [`histogram`]).

pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod eval;
pub mod events;
pub mod fused_optim;
pub mod histogram;
pub mod metrics;
pub mod optim;
pub mod params;
pub mod resume;
pub mod setup;
pub mod trainer;

pub use checkpoint::TrainerState;
pub use config::TrainConfig;
pub use events::{Event, OnEvent, Outcome};
pub use optim::Schedule;
pub use trainer::train;
