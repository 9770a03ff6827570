//! `lion demo`: the seed experiment end to end ([`lion_demo`]); this parses the flags.

use std::path::PathBuf;

use anyhow::Result;
use lion_demo::systems::Ablation;
use lion_demo::DemoConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Where the world and every artefact go. A rerun into the same folder reuses a stage only
    /// when its `stage.json` records the same inputs (seed, sizes, settings, input checksums).
    #[arg(long, default_value = "demo-out")]
    out: PathBuf,
    /// Sentence transformer (caption selection) and initial tag encoder.
    #[arg(long, default_value = super::DEFAULT_MINILM, value_parser = super::model_dir)]
    sentence_model: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// PEFT runs per prompt kind, with seeds SEED, SEED+1, ... (the world, tagger and tag
    /// encoder are shared); the comparison's intervals cover seeds and test items.
    #[arg(long, default_value_t = 1)]
    seeds: usize,
    /// Ablations trained and evaluated beside the prompt kinds, comma-separated: `none` (no
    /// tags, no soft prompt), `oracle` (dynamic prompt, ground-truth tags at score 1.0).
    #[arg(long, value_delimiter = ',')]
    ablations: Vec<Ablation>,
    /// Training images of the world.
    #[arg(long, default_value_t = 600)]
    train: usize,
    /// Test images (the validation split has half as many). 300 rather than fewer: the REC gains
    /// over the centre box are a few points, and with 120 images (580 expressions) the 95%
    /// interval of a paired difference was about +-1.7 points.
    #[arg(long, default_value_t = 300)]
    test: usize,
    /// The pretrained tagger folder (`lion train-tagger`'s output), RAM's stand-in.
    #[arg(long, default_value = "assets/shapes-tagger")]
    tagger: PathBuf,
    /// Train the tagger first, on a world of its own seed (SEED + 2000), and use that; written
    /// to OUT/tagger-pretrained (copy it to assets/shapes-tagger to ship it). Implied by
    /// --from-scratch.
    #[arg(long)]
    train_tagger: bool,
    /// Training images of the tagger's world with --train-tagger.
    #[arg(long, default_value_t = 6000)]
    tagger_images: usize,
    /// Tagger epochs with --train-tagger.
    #[arg(long, default_value_t = 36)]
    tagger_epochs: usize,
    /// Tag-encoder epochs (30 steps of 16 anchors each, about 2 minutes on 2 cores); the most
    /// with --tagenc-patience. 2 keeps the default run within 20 minutes; the validation loss
    /// still creeps down after that (see the README's demo section).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Tag-encoder AdamW learning rate (constant; DynLION's 5e-5 is for COCO's 100k images, the
    /// demo's 480 anchors need a larger step).
    #[arg(long, default_value_t = 2e-4)]
    tagenc_lr: f64,
    /// Tag-encoder validation every N optimizer steps (metrics.jsonl lines, curve points).
    #[arg(long, default_value_t = 5)]
    tagenc_eval_every: usize,
    /// Stop the tag encoder once its validation loss has not improved for N validations in a
    /// row, keeping the best weights (0: train all --epochs). The default stops once the
    /// validation loss is flat for 20 steps.
    #[arg(long, default_value_t = 4)]
    tagenc_patience: usize,
    /// LION optimizer steps per prompt kind.
    #[arg(long, default_value_t = 400)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// The pretrained backbone folder (lion.json + backbone.safetensors).
    #[arg(long, default_value = "assets/shapes-backbone")]
    backbone: PathBuf,
    /// Pretrain the backbone and the tagger first (each on a world of its own seed) and use
    /// them; written to OUT/backbone and OUT/tagger-pretrained (copy them to
    /// assets/shapes-backbone and assets/shapes-tagger to ship them).
    #[arg(long)]
    from_scratch: bool,
    /// Backbone pretraining steps (batch 32) with --from-scratch.
    #[arg(long, default_value_t = 4000)]
    pretrain_steps: u64,
    /// Images of the pretraining world with --from-scratch (generated in seconds). 2000 were
    /// too few: the backbone learnt their boxes by heart instead of learning to localise
    /// (assets/shapes-backbone/README.md).
    #[arg(long, default_value_t = 20000)]
    pretrain_images: usize,
    /// With --from-scratch: the steps of every pretraining leg after the first (REC on one-,
    /// two-, three- and four-object images, then four-object images again, each followed by a
    /// mixed leg; 35,500 steps in all, the curriculum that made the shipped backbone localise)
    /// multiplied by this. 1 is the shipped
    /// recipe; smaller values are for trying the pipeline.
    #[arg(long, default_value_t = 1.0)]
    pretrain_scale: f64,
    /// Beams at evaluation (1 = greedy; 5 as upstream LION's `generate`).
    #[arg(long, default_value_t = 5)]
    num_beams: usize,
    /// Bootstrap resamples of the report's intervals.
    #[arg(long, default_value_t = 1000)]
    resamples: usize,
}

pub fn run(args: Args) -> Result<()> {
    let cfg = DemoConfig {
        out: args.out,
        sentence_model: args.sentence_model,
        seed: args.seed,
        seeds: args.seeds,
        ablations: args.ablations,
        train: args.train,
        test: args.test,
        tagger: args.tagger,
        train_tagger: args.train_tagger,
        tagger_images: args.tagger_images,
        tagger_epochs: args.tagger_epochs,
        epochs: args.epochs,
        tagenc_lr: args.tagenc_lr,
        tagenc_eval_every: args.tagenc_eval_every,
        tagenc_patience: args.tagenc_patience,
        steps: args.steps,
        batch_size: args.batch_size,
        backbone: args.backbone,
        from_scratch: args.from_scratch,
        pretrain_steps: args.pretrain_steps,
        pretrain_images: args.pretrain_images,
        pretrain_scale: args.pretrain_scale,
        num_beams: args.num_beams,
        resamples: args.resamples,
    };
    lion_demo::run(&cfg, &super::Terminal)
}
