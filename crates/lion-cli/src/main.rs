//! `lion`: run, train, evaluate and serve LION and Dynamic LION.
//!
//! A thin layer over the library crates: one file per subcommand under `cmd/`.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lion", version, about = "LION and Dynamic LION in pure Rust")]
struct Cli {
    /// Log filter (`RUST_LOG` syntax), e.g. `info` or `lion_core=debug`.
    #[arg(long, global = true, default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sentence embeddings with a BERT model folder (all-MiniLM-L6-v2 by default), as JSON lines.
    Embed(cmd::embed::Args),
    /// Caption images with LION: `lion caption (--model DIR | --preset P --random-weights) IMAGE...`.
    Caption(cmd::ask::Args),
    /// Answer a question about an image: `lion vqa [MODEL] IMAGE QUESTION`.
    Vqa(cmd::ask::Args),
    /// Find the object a phrase refers to: `lion ground [MODEL] IMAGE EXPRESSION [--draw out.png]`.
    Ground(cmd::ask::Args),
    /// Dump a LION forward's intermediate tensors: `lion forward [MODEL] IMAGE --dump out.safetensors`.
    Forward(cmd::forward::Args),
    /// The centroid-nearest caption of every image (Dynamic LION step 2), as JSON lines.
    SelectCaptions(cmd::select_captions::Args),
    /// Triplet fine-tuning of the tag encoder towards the chosen captions (Dynamic LION step 3).
    TrainTagEncoder(cmd::train_tag_encoder::Args),
    /// PEFT training of LION from a JSON config: `lion train --config C.json [--resume]`.
    Train(cmd::train::Args),
    /// RAM image tags with scores, as JSON lines (images, folders, or --list FILE).
    Tag(cmd::tag::Args),
    /// Train the tiny RAM-architecture tagger on a ShapesWorld: `lion train-tagger --world W --out DIR`.
    TrainTagger(cmd::train_tagger::Args),
    /// The seed experiment end to end: world, tags, tag encoder, a PEFT run per prompt kind, evaluation, report: `lion demo --out DIR`.
    Demo(cmd::demo::Args),
    /// ShapesWorld, the synthetic world of the demo: `lion world generate --out DIR --seed S ...`.
    World(cmd::world::Args),
    /// Score predictions (captioning, VQA, A-OKVQA, REC) against a benchmark's ground truth,
    /// or (--model / --preset, --images, --pred-out) run the model over the split first.
    Eval(cmd::eval::Args),
    /// Join the shard files of a sharded run (`--shard i/N`) into what one unsharded run writes:
    /// `lion merge --out OUT FILES...`.
    Merge(cmd::merge::Args),
    /// HTTP API: POST /v1/{caption,vqa,ground,tags,embed}, /health,
    /// /metrics, /openapi.json.
    Serve(cmd::serve::Args),
    /// Rewrite weight files once as safetensors, streamed, optionally in bf16/f16/f32:
    /// `lion convert --model SRC --out DST [--dtype bf16]` or `--weights FILE.pth --out F.safetensors`.
    Convert(cmd::convert::Args),
    /// Per-stage timing with random weights (`scripts/bench.sh` runs PyTorch beside it).
    Bench(cmd::bench::Args),
    /// The CPU features found and the kernels picked for them (JSON).
    Doctor(cmd::doctor::Args),
}

/// The system allocator, with large blocks kept for reuse while training
/// (`lion_core::alloc`).
#[global_allocator]
static ALLOC: lion_core::alloc::CachingAlloc = lion_core::alloc::CachingAlloc;

fn main() -> std::process::ExitCode {
    lion_core::util::tune_allocator();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    lion_core::cpu::log_choice();
    let result = match cli.command {
        Command::Embed(args) => cmd::embed::run(args),
        Command::Caption(args) => cmd::ask::run(lion_core::prompt::Task::Caption, args),
        Command::Vqa(args) => cmd::ask::run(lion_core::prompt::Task::Vqa, args),
        Command::Ground(args) => cmd::ask::run(lion_core::prompt::Task::Rec, args),
        Command::Forward(args) => cmd::forward::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::World(args) => cmd::world::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Convert(args) => cmd::convert::run(args),
        Command::SelectCaptions(args) => cmd::select_captions::run(args),
        Command::TrainTagEncoder(args) => cmd::train_tag_encoder::run(args),
        Command::TrainTagger(args) => cmd::train_tagger::run(args),
        Command::Train(args) => cmd::train::run(args),
        Command::Tag(args) => cmd::tag::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Merge(args) => cmd::merge::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and its causes joined by ": ", as `{e:#}` prints them, except that a cause whose text
/// already ends the message before it (an error that prints its source itself, such as a file
/// error "path: reason") is not printed twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.is_empty() && out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn a_cause_the_message_already_ends_with_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(lion_core::Error::io("/m/config.json", io))
            .context("cannot load model folder /m");
        assert_eq!(
            error_chain(&e),
            "cannot load model folder /m: /m/config.json: No such file"
        );
        // causes that add something are all kept
        let e = anyhow::anyhow!("inner").context("middle").context("outer");
        assert_eq!(error_chain(&e), "outer: middle: inner");
    }
}
