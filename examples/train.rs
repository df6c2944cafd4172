//! Train a minGRU LM from Rust alone, then generate with it:
//! `cargo run --release -p grufinity --example train -- CORPUS.txt [max_steps] [dim] [depth]`

use burn::tensor::Device;
use grufinity::generate::SamplingConfig;
use grufinity::model::quant::WeightDtype;
use grufinity::train::{train, Event, TrainConfig};
use grufinity::Loaded;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: train CORPUS.txt [max_steps] [dim] [depth]")?;
    let mut config = TrainConfig {
        data: vec![path.into()],
        name: format!("rust-example-{}", std::process::id()),
        max_steps: Some(args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100)),
        eval_every: 50,
        ..Default::default()
    };
    if let Some(d) = args.get(2) {
        config.model.dim = d.parse()?;
    }
    if let Some(d) = args.get(3) {
        config.model.depth = d.parse()?;
    }
    let outcome = train(config, &mut |event| {
        match event {
            Event::Step { step, loss, tokens_per_sec, .. } => println!("step {step:5}  loss {loss:.4}  {tokens_per_sec:.0} tok/s"),
            Event::Eval { step, val_loss, val_bpb, .. } => println!("eval {step:5}  val loss {val_loss:.4}  ({val_bpb:.3} bits/byte)"),
            Event::Sample { text, .. } => println!("--- sample ---\n{text}\n--------------"),
            _ => {}
        }
        true
    })?;
    println!("checkpoint: {}", outcome.checkpoint.display());

    // Generation from the saved run: prefill the prompt, then one recurrent step per token.
    let model = Loaded::load(&outcome.run_dir, &Device::flex(), WeightDtype::F32)?;
    let sampling = SamplingConfig { max_new_tokens: 80, seed: 1, ..Default::default() };
    let (generation, _state) = model.generate(b"The ", &sampling, None, &mut |_| true)?;
    println!("The {}", String::from_utf8_lossy(&generation.text));
    Ok(())
}
