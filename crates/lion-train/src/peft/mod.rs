//! PEFT training of LION (upstream stage-4 recipe, docs/DESIGN.md §4, "Training"): the ViT and the T5
//! backbone are frozen; trained are the Q-Former, `query_tokens`, `t5_proj`, `ln_vision`, the
//! aggregator (`fusion_adapter.*`, `ln_adapter`, `adapter_proj.*`), the T5 adapters and router
//! (`t5_model.*adapter*`) and the soft prompt (`soft_prompt_hint`, `dynamic_prompt_*`).
//!
//! Decisions (see the README section):
//! - Dropout is off everywhere (every forward runs with `train = false`): candle's CPU dropout
//!   draws from an unseeded RNG, and a resumed run must repeat the uninterrupted one exactly.
//!   Upstream keeps T5 and Q-Former dropout active.
//! - The Q-Former's last-layer text FFN (`layer.{last}.intermediate.*` / `layer.{last}.output.*`)
//!   is excluded from the trainable set: with only LION's outputs it never gets a gradient
//!   (upstream trains it with zero gradient, i.e. only weight decay moves it).
//! - The data order is a pure function of (seed, step): the task of each step is drawn by the
//!   ratios from a generator seeded by the step, each task's samples are visited in a per-epoch
//!   permutation, augmentation is seeded per (step, micro-batch, sample). A checkpoint therefore
//!   only needs the step and the per-task batch counters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use image::RgbImage;
use lion_core::adapter::Route;
use lion_core::model_spec::{ModelSpec, Trainable};
use lion_core::pipeline::{LionPipeline, Request};
use lion_core::preprocess::{load_image, Rng, TrainTransform};
use lion_core::prompt::{PromptKind, Task};
use lion_core::rules::Invalid;
use lion_core::tags::ScoredTag;
use lion_core::weights::{Checkpoint, LoadMode, WeightLoader};
use lion_core::{Error, Result};
use lion_data::lion_json::{read_lion, LionSample};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::augment::augment_sample;
use crate::checkpoint::{self, TrainState};
use crate::optim::AdamW;
use crate::rng::SplitMix64;
use crate::schedule::Schedule;

mod config;
mod eval;
mod groups;
mod init;
mod metrics;
mod run;

pub use config::*;
pub use groups::*;
use init::*;
pub use metrics::*;
pub use run::*;

/// One task's data: LION training JSON files (`question` is used verbatim as the instruction).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskData {
    /// The task, which also picks the score at evaluation: CIDEr-D against every caption of the
    /// image in the validation file (caption), VQA accuracy with the single answer standing for
    /// all ten annotators (vqa), Acc@0.5 of the parsed box (rec).
    pub kind: Task,
    pub train: PathBuf,
    #[serde(default)]
    pub val: Option<PathBuf>,
    /// Sampling weight of this task's batches.
    #[serde(default = "one")]
    pub ratio: f64,
}

fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.wrapping_mul(lion_rng::GAMMA)).next_u64()
}

/// The trainer: model, optimizer, data, and where it stands.
pub struct PeftTrainer {
    pub cfg: PeftConfig,
    pub pipe: LionPipeline,
    pub opt: AdamW,
    /// Frozen vars (tests check they stay bit-identical); empty unless built with them.
    pub state: TrainState,
    data: Vec<Vec<LionSample>>,
    val: Vec<Vec<LionSample>>,
    images: HashMap<String, RgbImage>,
    perms: HashMap<(usize, u64), Vec<usize>>,
    train_tf: TrainTransform,
}

impl PeftTrainer {
    /// Builds the model (from the preset's saved initial weights or the model folder), applies a
    /// checkpoint's trainable tensors and optimizer state when `resume` is given.
    pub fn new(cfg: PeftConfig, resume: Option<checkpoint::Loaded>, dev: &Device) -> Result<Self> {
        std::fs::create_dir_all(&cfg.output_dir).map_err(|e| Error::io(&cfg.output_dir, e))?;
        let mode = if cfg.lenient {
            LoadMode::Lenient
        } else {
            LoadMode::Strict
        };
        let mut spec = match (&cfg.preset, &cfg.model_dir) {
            (Some(name), _) => {
                let mut spec = ModelSpec::preset(name, parse_prompt(&cfg.prompt)?)?;
                fits(&spec.config, &cfg)?;
                // The initial weights are saved once, so that a resumed run starts from the same.
                let init = cfg.output_dir.join("init.safetensors");
                if !init.exists() {
                    save_random_init(&spec.config, &init, cfg.seed, dev)?;
                }
                spec.checkpoints = vec![Checkpoint::open(&init)?];
                spec.t5_tokenizer = cfg.t5_tokenizer.clone();
                spec.qformer_tokenizer = cfg.qformer_tokenizer.clone();
                spec.tag_encoder = cfg.tag_encoder.clone();
                spec
            }
            (None, Some(dir)) => ModelSpec::from_folder(dir, mode)?,
            (None, None) => unreachable!("validated"),
        };
        if let Some(r) = &resume {
            spec.checkpoints.push(Checkpoint::from_tensors(
                r.dir.join(checkpoint::TRAINABLE).display().to_string(),
                r.trainable.clone(),
            ));
        }
        // The data's `question` is the whole instruction.
        spec.config.templates.vqa = "{}".into();
        spec.config.templates.rec = "{}".into();
        let qlayers = spec
            .config
            .qformer
            .as_ref()
            .map_or(0, |q| q.bert.num_hidden_layers);
        let all = cfg.trainable == TrainableSet::All;
        if all {
            spec.config.vit.frozen = false;
        }
        let varmap = VarMap::new();
        let select = move |k: &str| {
            if all {
                // The backbone too, but never the T5 adapters, nor the Q-Former parts that get
                // no gradient (the PEFT set's exclusions).
                if let Some(rest) = k.strip_prefix("t5_model.") {
                    !rest.contains("adapter")
                } else {
                    k.starts_with("visual_encoder.") || is_trainable(k, qlayers)
                }
            } else {
                is_trainable(k, qlayers)
            }
        };
        let img_size = spec.config.vit.img_size as u32;
        let pipe = spec
            .with_mode(mode)
            .with_device(dev.clone())
            .with_trainable(Trainable {
                vars: varmap.clone(),
                select: Box::new(select),
                seed: cfg.seed,
                batch_size: cfg.batch_size,
            })
            .build()?;
        let vars = lion_core::weights::varmap_vars(&varmap);
        let mut opt = peft_adamw(vars, &cfg)?;
        let state = match &resume {
            Some(r) => {
                opt.load_state(r.state.step, &r.optimizer)?;
                if r.state.task_batches.len() != cfg.tasks.len() {
                    return Err(Error::config(
                        r.dir.display(),
                        "the checkpoint was made with a different number of tasks",
                    ));
                }
                r.state.clone()
            }
            None => TrainState {
                step: 0,
                task_batches: vec![0; cfg.tasks.len()],
                seed: cfg.seed,
            },
        };
        let mut data = vec![];
        let mut val = vec![];
        for t in &cfg.tasks {
            let d =
                read_lion(&t.train).map_err(|e| Error::config(t.train.display(), e.to_string()))?;
            if d.is_empty() {
                return Err(Error::config(t.train.display(), "no samples"));
            }
            data.push(d);
            val.push(match &t.val {
                Some(p) => read_lion(p).map_err(|e| Error::config(p.display(), e.to_string()))?,
                None => vec![],
            });
        }
        let train_tf = TrainTransform {
            size: img_size,
            ..TrainTransform::lion()
        };
        Ok(Self {
            cfg,
            pipe,
            opt,
            state,
            data,
            val,
            images: HashMap::new(),
            perms: HashMap::new(),
            train_tf,
        })
    }

    /// The trainable vars by key.
    pub fn trainable(&self) -> &[(String, Var)] {
        self.opt.vars()
    }

    /// The task of optimizer step `step`, drawn by the ratios (a pure function of seed and step).
    pub fn task_for_step(&self, step: u64) -> usize {
        let total: f64 = self.cfg.tasks.iter().map(|t| t.ratio).sum();
        let u = (mix(self.state.seed, step) >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (i, t) in self.cfg.tasks.iter().enumerate() {
            acc += t.ratio;
            if u < acc && t.ratio > 0.0 {
                return i;
            }
        }
        self.cfg
            .tasks
            .iter()
            .rposition(|t| t.ratio > 0.0)
            .expect("validated")
    }

    fn sample_index(&mut self, task: usize, pos: u64) -> usize {
        let n = self.data[task].len() as u64;
        let epoch = pos / n;
        let seed = mix(self.state.seed ^ 0x5EED, (task as u64) << 40 | epoch);
        let perm = self.perms.entry((task, epoch)).or_insert_with(|| {
            let mut p: Vec<usize> = (0..n as usize).collect();
            SplitMix64::new(seed).shuffle(&mut p);
            p
        });
        perm[(pos % n) as usize]
    }

    fn image(&mut self, rel: &str) -> Result<RgbImage> {
        if let Some(i) = self.images.get(rel) {
            return Ok(i.clone());
        }
        let img = load_image(self.cfg.image_root.join(rel))?;
        self.images.insert(rel.to_string(), img.clone());
        Ok(img)
    }

    fn request(s: &LionSample) -> Request {
        let task = match s.route {
            Route::RegionLevel => Task::Rec,
            Route::ImageLevel => Task::Vqa,
        };
        let tags = s
            .tags
            .split(", ")
            .filter(|t| !t.is_empty())
            .map(|t| ScoredTag::parse_or_bare(t).into_pair())
            .collect();
        Request {
            task,
            text: s.question.clone(),
            tags,
        }
    }

    /// Prepares a training micro-batch: augmented pixels (boxes moved with the image for
    /// region-level samples), prompt, labels. A mirrored sample's text is mirrored too
    /// ([`augment_sample`]: "the leftmost star" -> "the rightmost star" in expressions,
    /// questions, answers and captions), so that its words keep describing the picture.
    pub fn micro_batch(
        &mut self,
        task: usize,
        samples: &[LionSample],
        seed: u64,
    ) -> Result<(lion_core::lion::LionBatch, Tensor, usize)> {
        let dev = self.pipe.device().clone();
        let mut imgs = vec![];
        let mut pix = vec![];
        let mut answers = vec![];
        let mut texts: Vec<LionSample> = samples.to_vec();
        for (j, s) in samples.iter().enumerate() {
            let img = self.image(&s.image)?;
            let mut rng = Rng::new(mix(seed, j as u64));
            if !self.cfg.augment {
                pix.push(self.pipe.transform().apply(&img, &dev)?);
                answers.push(s.answer.clone());
            } else {
                let origin = self.cfg.tasks[task].train.display();
                let a = augment_sample(&self.train_tf, &img, s, &mut rng, &dev, &origin)?;
                pix.push(a.pixel_values);
                answers.push(a.sample.answer.clone());
                texts[j] = a.sample;
            }
            imgs.push(img);
        }
        let reqs: Vec<Request> = texts.iter().map(Self::request).collect();
        let mut batch = self.pipe.prepare(&imgs, &reqs)?;
        batch.pixel_values = Tensor::stack(&pix, 0)?;
        let refs: Vec<&str> = answers.iter().map(|s| s.as_str()).collect();
        let labels = self.pipe.labels(&refs)?;
        Ok((batch, labels, samples.len()))
    }

    /// The loss of a micro-batch (no dropout), for tests and the parity check.
    pub fn loss_of(&mut self, task: usize, samples: &[LionSample], seed: u64) -> Result<Tensor> {
        let (batch, labels, _) = self.micro_batch(task, samples, seed)?;
        Ok(self
            .pipe
            .model()
            .forward_train(&batch, &labels, false)?
            .loss)
    }

    /// Samples of a task's training file.
    pub fn train_samples(&self, task: usize) -> &[LionSample] {
        &self.data[task]
    }

    /// One optimizer step (all micro-batches). On a non-finite loss or gradient nothing is
    /// changed and [`crate::error::Error::NonFinite`] is returned.
    pub fn step(&mut self) -> crate::error::Result<StepRecord> {
        let step = self.state.step;
        let task = self.task_for_step(step);
        let mut counters = self.state.task_batches.clone();
        let accum = self.cfg.grad_accum;
        let bs = self.cfg.batch_size;
        let mut grads: Vec<Tensor> = self
            .opt
            .vars()
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut loss_sum = 0.0;
        let mut n = 0;
        for micro in 0..accum {
            let k = counters[task];
            counters[task] += 1;
            let idx: Vec<usize> = (0..bs as u64)
                .map(|j| self.sample_index(task, k * bs as u64 + j))
                .collect();
            let samples: Vec<LionSample> =
                idx.iter().map(|&i| self.data[task][i].clone()).collect();
            let seed = mix(self.state.seed ^ 0xA06, step << 16 | micro as u64);
            let (batch, labels, b) = self.micro_batch(task, &samples, seed)?;
            let loss = self
                .pipe
                .model()
                .forward_train(&batch, &labels, false)?
                .loss;
            let lv = loss.to_scalar::<f32>()? as f64;
            if !lv.is_finite() {
                return Err(crate::error::Error::NonFinite {
                    step: step + 1,
                    what: format!("loss ({lv}) of task {task}, micro-batch {micro}"),
                });
            }
            let gs = (loss / accum as f64)?.backward()?;
            accumulate(&mut grads, &gs, self.opt.vars())?;
            loss_sum += lv;
            n += b;
        }
        let grad_norm = clip_global_norm(&mut grads, self.cfg.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(crate::error::Error::NonFinite {
                step: step + 1,
                what: format!("gradient (norm {grad_norm})"),
            });
        }
        let lr = self.cfg.schedule.lr(step, self.cfg.steps);
        self.opt.set_learning_rate(lr);
        self.opt.step_grads(&grads)?;
        self.state.task_batches = counters;
        self.state.step += 1;
        Ok(StepRecord {
            step: step + 1,
            task,
            loss: loss_sum / accum as f64,
            lr,
            grad_norm,
            samples: n,
        })
    }

    /// The trainable tensors under their (upstream) keys.
    pub fn trainable_tensors(&self) -> HashMap<String, Tensor> {
        self.opt
            .vars()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Writes a checkpoint of the current state.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let cfg = serde_json::to_value(&self.cfg).expect("serializable");
        checkpoint::save(
            &self.cfg.output_dir,
            &self.state,
            &self.trainable_tensors(),
            &self.opt.state_tensors()?,
            &cfg,
            self.cfg.keep_checkpoints,
        )
    }

    /// The model as it stands, for inference ([`LionPipeline::inference_model`]: the same
    /// weights, no `Var`, so decoding builds no autograd graph).
    pub fn eval_model(&self) -> Result<lion_core::lion::LionModel> {
        self.pipe.inference_model()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trainable_set_follows_upstream() {
        for k in [
            "Qformer.bert.encoder.layer.0.intermediate.dense.weight",
            "Qformer.bert.encoder.layer.1.output_query.dense.weight",
            "Qformer.bert.encoder.layer.1.attention.output.dense.weight",
            "query_tokens",
            "t5_proj.weight",
            "ln_vision.weight",
            "fusion_adapter.blocks.0.attn.qkv.weight",
            "ln_adapter.bias",
            "adapter_proj.0.weight",
            "t5_model.encoder.block.0.layer.1.adapter.router_ratio1",
            "soft_prompt_hint",
            "dynamic_prompt_projection.weight",
        ] {
            assert!(is_trainable(k, 2), "{k}");
        }
        for k in [
            "visual_encoder.blocks.0.attn.qkv.weight",
            "t5_model.shared.weight",
            "t5_model.encoder.block.0.layer.0.SelfAttention.q.weight",
            "Qformer.bert.encoder.layer.1.intermediate.dense.weight",
            "Qformer.bert.encoder.layer.1.output.LayerNorm.weight",
        ] {
            assert!(!is_trainable(k, 2), "{k}");
        }
    }

    #[test]
    fn groups_as_upstream() {
        assert_eq!(group_of("t5_proj.weight", 2, 2.0, 5.0).0, "base/decay");
        assert_eq!(group_of("t5_proj.bias", 1, 2.0, 5.0).0, "base/no_decay");
        assert_eq!(group_of("ln_vision.weight", 1, 2.0, 5.0).0, "base/no_decay");
        let g = group_of("fusion_adapter.blocks.0.mlp.fc1.weight", 2, 2.0, 5.0);
        assert_eq!((g.0.as_str(), g.1), ("fusion_adapter/decay", 2.0));
        let g = group_of("dynamic_prompt_projection.weight", 2, 2.0, 5.0);
        assert_eq!((g.0.as_str(), g.1), ("dynamic_prompt/decay", 5.0));
    }
}
