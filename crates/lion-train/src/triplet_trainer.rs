//! Triplet fine-tuning of the tag encoder (Dynamic LION step 3, docs/DESIGN.md §4):
//! anchor = encoder(`"tag: score, ..."`), positive = the image's chosen caption embedded by the
//! frozen sentence transformer, negative = the chosen caption embedding of a different image
//! (uniform, seeded, never the same image; DynLION's could collide with the positive).
//! Loss: [`TripletMarginLoss`]; optimizer: [`crate::optim::AdamW`] (PyTorch semantics, decoupled
//! weight decay; updates in place).
//!
//! Each epoch: a seeded shuffle of the training images, batches of `batch_size`, one AdamW step
//! per batch; then the validation split is scored with fixed negatives (drawn once, so the
//! validation loss is comparable across epochs), at each epoch's end and, with `eval_every`,
//! every that many steps. Step 0 is the validation score before training. Per validation,
//! `metrics.jsonl` gets one line (appended atomically) and `curves.png` is redrawn (x: optimizer
//! step). The model folder is saved at each epoch's end, so a killed run keeps its last finished
//! epoch; with `patience`, training stops once the validation loss has not improved for that
//! many validations, and the folder holds the best validation loss's weights instead.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use candle_nn::ParamsAdamW;

use crate::optim::AdamW;
use lion_core::{input_err, Error, Result};
use serde::{Deserialize, Serialize};

use lion_core::sentence::SentenceEmbedder;

use crate::plot::{draw_png, Panel, Series};
use crate::reader_frontier::ReaderFrontier;
use crate::records::append_jsonl_atomic;
use crate::records::{Chosen, ImageRecord};
use crate::rng::SplitMix64;
use crate::tag_encoder::TagEncoder;
use crate::triplet::{cosine_similarity, TripletMarginLoss};

/// Hyper-parameters. Defaults follow DynLION's `bert/fine-tune.yaml` where it has them
/// (lr 5e-5, batch 16, 5 epochs, 5% validation) and PyTorch's otherwise.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TripletConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    pub margin: f64,
    /// Norm degree of the triplet distances.
    pub p: f64,
    /// FaceNet's squared distances (`d^p`) in the loss instead of PyTorch's `d`
    /// ([`TripletMarginLoss::squared`]).
    #[serde(default)]
    pub squared: bool,
    pub val_fraction: f64,
    pub seed: u64,
    /// Dropout in the encoder while training (the model's own rates); off for parity tests.
    pub dropout: bool,
    /// Also validate (one metrics line, one curve point) every this many optimizer steps, not
    /// only at each epoch's end (0: epoch ends only).
    #[serde(default)]
    pub eval_every: usize,
    /// Early stop: end training when the validation loss has not beaten its best for this many
    /// validations in a row; the model folder then holds the weights of the best validation
    /// loss (0: train every epoch, keep the last).
    #[serde(default)]
    pub patience: usize,
}

impl Default for TripletConfig {
    fn default() -> Self {
        Self {
            epochs: 5,
            batch_size: 16,
            lr: 5e-5,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            margin: 1.0,
            p: 2.0,
            squared: false,
            val_fraction: 0.05,
            seed: 0,
            dropout: true,
            eval_every: 0,
            patience: 0,
        }
    }
}

impl TripletConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            input_err!("batch size must be at least 1");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            input_err!("learning rate must be a positive number, got {}", self.lr);
        }
        if !(self.p.is_finite() && self.p > 0.0) {
            input_err!("p must be a positive finite norm degree, got {}", self.p);
        }
        if !self.margin.is_finite() {
            input_err!("margin must be finite, got {}", self.margin);
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            input_err!("val fraction must be in [0, 1), got {}", self.val_fraction);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            input_err!("weight decay must be >= 0, got {}", self.weight_decay);
        }
        if self.patience > 0 && self.val_fraction == 0.0 {
            input_err!(
                "patience {} needs a validation split (val fraction is 0)",
                self.patience
            );
        }
        Ok(())
    }

    pub fn loss(&self) -> TripletMarginLoss {
        TripletMarginLoss {
            squared: self.squared,
            ..TripletMarginLoss::new(self.margin, self.p)
        }
    }
}

/// Anchor texts and positive embeddings, one per image.
pub struct TripletData {
    /// The tag strings.
    pub anchors: Vec<String>,
    /// (n, d) the chosen captions' embeddings, on the encoder's device.
    pub positives: Tensor,
}

impl TripletData {
    pub fn new(anchors: Vec<String>, positives: Tensor) -> Result<Self> {
        let (n, _) = positives.dims2()?;
        if n != anchors.len() {
            input_err!("{} anchors but {n} positive embeddings", anchors.len());
        }
        Ok(Self {
            anchors,
            positives: positives.to_dtype(DType::F32)?,
        })
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// Builds the training data: each image's tag string (the images need `tags`) and its chosen
/// caption embedded by the frozen sentence transformer `embedder`, `batch_size` per pass.
pub fn triplet_data(
    images: &[ImageRecord],
    chosen: &[Chosen],
    embedder: &SentenceEmbedder,
    batch_size: usize,
) -> Result<TripletData> {
    if images.len() != chosen.len() {
        input_err!(
            "{} images but {} chosen captions",
            images.len(),
            chosen.len()
        );
    }
    let anchors = images
        .iter()
        .map(|r| match &r.tags {
            Some(t) => Ok(t.to_text()),
            None => Err(Error::Input(format!(
                "image {} (line {}) has no `tags`: the tag encoder needs them",
                r.key(),
                r.line
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let empty = anchors.iter().filter(|a| a.is_empty()).count();
    if empty > 0 {
        tracing::warn!("{empty} images have no tags: their anchor is the empty string");
    }
    let texts: Vec<&str> = chosen.iter().map(|c| c.caption.as_str()).collect();
    let embs = embedder.embed(&texts, batch_size)?;
    let d = embs.first().map_or(0, Vec::len);
    let flat: Vec<f32> = embs.into_iter().flatten().collect();
    let positives = Tensor::from_vec(flat, (texts.len(), d), embedder.device())?;
    TripletData::new(anchors, positives)
}

/// A seeded train/validation split of `n` items: `round(n * val_fraction)` validation items
/// (at least 1 when the fraction is positive), both lists sorted.
pub fn split(n: usize, val_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed ^ 0x5EED_5B11_7000_0001).shuffle(&mut idx);
    let mut n_val = (n as f64 * val_fraction).round() as usize;
    if val_fraction > 0.0 && n > 1 {
        n_val = n_val.max(1);
    }
    let n_val = n_val.min(n);
    let mut val = idx[..n_val].to_vec();
    let mut train = idx[n_val..].to_vec();
    val.sort_unstable();
    train.sort_unstable();
    (train, val)
}

/// A uniformly drawn member of `pool` other than `exclude` (`pool` must hold another one).
pub fn draw_negative(rng: &mut SplitMix64, pool: &[usize], exclude: usize) -> usize {
    debug_assert!(pool.iter().any(|&i| i != exclude));
    loop {
        let j = pool[rng.below(pool.len())];
        if j != exclude {
            return j;
        }
    }
}

/// The fixed negative of each validation item, drawn once from `seed`: from the validation
/// split when it has two items or more, else from the training split.
pub fn validation_negatives(train: &[usize], val: &[usize], seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ 0x7A1_0000_0000_0002);
    let pool = if val.len() >= 2 { val } else { train };
    val.iter()
        .map(|&i| draw_negative(&mut rng, pool, i))
        .collect()
}

/// Sums over the items of one or more batches.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchStats {
    /// Sum over batches of (mean batch loss x batch size).
    pub loss_sum: f64,
    /// Sum of cos(anchor, positive).
    pub cos_ap_sum: f64,
    /// Sum of cos(anchor, negative).
    pub cos_an_sum: f64,
    pub n: usize,
}

impl BatchStats {
    pub fn add(&mut self, o: &BatchStats) {
        self.loss_sum += o.loss_sum;
        self.cos_ap_sum += o.cos_ap_sum;
        self.cos_an_sum += o.cos_an_sum;
        self.n += o.n;
    }
    fn mean(&self, x: f64) -> Option<f64> {
        (self.n > 0).then(|| x / self.n as f64)
    }
    pub fn loss(&self) -> Option<f64> {
        self.mean(self.loss_sum)
    }
    pub fn cos_ap(&self) -> Option<f64> {
        self.mean(self.cos_ap_sum)
    }
    pub fn cos_an(&self) -> Option<f64> {
        self.mean(self.cos_an_sum)
    }
}

/// One line of `metrics.jsonl`: a validation, with the training statistics of the steps since
/// the previous line. Epoch 0 is before training (validation only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    pub epoch: usize,
    /// Optimizer steps done so far (over all epochs).
    #[serde(default)]
    pub step: usize,
    pub train_loss: Option<f64>,
    pub train_cos_ap: Option<f64>,
    pub train_cos_an: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_cos_ap: Option<f64>,
    pub val_cos_an: Option<f64>,
    /// Optimizer steps since the previous line.
    pub steps: usize,
    pub train_seconds: f64,
    pub seconds_per_step: Option<f64>,
}

/// What [`TripletTrainer::fit`] reports as it goes.
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// Training starts: steps per epoch and the split sizes.
    Start {
        steps_per_epoch: usize,
        train: usize,
        val: usize,
    },
    /// One optimizer step finished.
    Step {
        epoch: usize,
        step: usize,
        loss: f64,
        seconds: f64,
    },
    /// An epoch finished (and was written).
    Epoch(EpochMetrics),
}

/// Where [`TripletTrainer::fit`] writes: the model folder and its curves.
#[derive(Debug, Clone)]
pub struct TrainOutputs {
    pub dir: PathBuf,
}

impl TrainOutputs {
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    pub fn curves(&self) -> PathBuf {
        self.dir.join("curves.png")
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("train_config.json")
    }
}

/// The tag encoder, its optimizer and the loss.
pub struct TripletTrainer {
    encoder: TagEncoder,
    opt: AdamW,
    loss: TripletMarginLoss,
    cfg: TripletConfig,
}

impl TripletTrainer {
    pub fn new(encoder: TagEncoder, cfg: TripletConfig) -> Result<Self> {
        cfg.validate()?;
        let opt = AdamW::new(
            encoder.varmap().all_vars(),
            ParamsAdamW {
                lr: cfg.lr,
                beta1: cfg.beta1,
                beta2: cfg.beta2,
                eps: cfg.adam_eps,
                weight_decay: cfg.weight_decay,
            },
        )?;
        Ok(Self {
            encoder,
            opt,
            loss: cfg.loss(),
            cfg,
        })
    }

    pub fn encoder(&self) -> &TagEncoder {
        &self.encoder
    }

    pub fn config(&self) -> &TripletConfig {
        &self.cfg
    }

    /// Differentiable: anchors' texts, positives (b, d), negatives (b, d)
    /// -> (scalar loss, anchor embeddings (b, d)).
    pub fn loss(
        &self,
        anchors: &[&str],
        positives: &Tensor,
        negatives: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let batch = self.encoder.tokenize(anchors)?;
        let a = self.encoder.forward(&batch, train && self.cfg.dropout)?;
        let loss = self.loss.forward(&a, positives, negatives)?;
        Ok((loss, a))
    }

    /// One AdamW update from gradients of the loss.
    pub fn apply(&mut self, grads: &GradStore) -> Result<()> {
        Ok(self.opt.step(grads)?)
    }

    fn stats(loss: &Tensor, a: &Tensor, p: &Tensor, n: &Tensor) -> Result<BatchStats> {
        let b = a.dim(0)?;
        let a = a.detach();
        let sum = |t: Tensor| -> Result<f64> { Ok(t.sum_all()?.to_scalar::<f32>()? as f64) };
        Ok(BatchStats {
            loss_sum: loss.to_scalar::<f32>()? as f64 * b as f64,
            cos_ap_sum: sum(cosine_similarity(&a, p)?)?,
            cos_an_sum: sum(cosine_similarity(&a, n)?)?,
            n: b,
        })
    }

    fn gather(data: &TripletData, idx: &[usize]) -> Result<Tensor> {
        let ids: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
        let ids = Tensor::new(ids.as_slice(), data.positives.device())?;
        Ok(data.positives.index_select(&ids, 0)?)
    }

    /// One training step on items `idx` with negatives `neg` (indices into `data`).
    pub fn step(&mut self, data: &TripletData, idx: &[usize], neg: &[usize]) -> Result<BatchStats> {
        let texts: Vec<&str> = idx.iter().map(|&i| data.anchors[i].as_str()).collect();
        let p = Self::gather(data, idx)?;
        let n = Self::gather(data, neg)?;
        let (loss, a) = self.loss(&texts, &p, &n, true)?;
        let stats = Self::stats(&loss, &a, &p, &n)?;
        if ![stats.loss_sum, stats.cos_ap_sum, stats.cos_an_sum]
            .iter()
            .all(|x| x.is_finite())
        {
            return Err(Error::Input(format!(
                "the loss or the embeddings are not finite (loss {}); stopping (a NaN in the data, or too high a learning rate?)",
                stats.loss().unwrap_or(f64::NAN)
            )));
        }
        let grads = loss.backward()?;
        self.apply(&grads)?;
        Ok(stats)
    }

    /// Scores items `idx` against negatives `neg` without training (dropout off).
    pub fn evaluate(&self, data: &TripletData, idx: &[usize], neg: &[usize]) -> Result<BatchStats> {
        let mut total = BatchStats::default();
        for (ic, nc) in idx
            .chunks(self.cfg.batch_size)
            .zip(neg.chunks(self.cfg.batch_size))
        {
            let texts: Vec<&str> = ic.iter().map(|&i| data.anchors[i].as_str()).collect();
            let p = Self::gather(data, ic)?;
            let n = Self::gather(data, nc)?;
            let (loss, a) = self.loss(&texts, &p, &n, false)?;
            total.add(&Self::stats(&loss.detach(), &a, &p, &n)?);
        }
        Ok(total)
    }

    /// The whole run: split, epochs, metrics, curves and the model folder in `out.dir`.
    pub fn fit(
        &mut self,
        data: &TripletData,
        out: &TrainOutputs,
        mut on_event: impl FnMut(&TrainEvent),
    ) -> Result<Vec<EpochMetrics>> {
        let cfg = self.cfg.clone();
        let _keep = lion_core::alloc::KeepLargeBlocks::new(lion_core::alloc::TRAINING_CACHE);
        // Dropout masks from the seed too, so the same seed gives the same encoder.
        lion_core::kernels::seed_dropout(cfg.seed);
        let (train, val) = split(data.len(), cfg.val_fraction, cfg.seed);
        if train.len() < 2 {
            input_err!(
                "{} images leave {} for training; at least 2 are needed (a negative must be another image)",
                data.len(),
                train.len()
            );
        }
        std::fs::create_dir_all(&out.dir).map_err(|e| Error::io(&out.dir, e))?;
        let cfg_json = serde_json::to_vec_pretty(&cfg).expect("config serialises");
        lion_core::util::write_atomic(out.config(), &cfg_json)?;
        let val_neg = validation_negatives(&train, &val, cfg.seed);
        let steps_per_epoch = train.len().div_ceil(cfg.batch_size);
        on_event(&TrainEvent::Start {
            steps_per_epoch,
            train: train.len(),
            val: val.len(),
        });
        tracing::info!(
            train = train.len(),
            val = val.len(),
            steps_per_epoch,
            "triplet tag-encoder training"
        );

        let mut history = vec![];
        let v0 = self.evaluate(data, &val, &val_neg)?;
        let m0 = EpochMetrics {
            epoch: 0,
            step: 0,
            train_loss: None,
            train_cos_ap: None,
            train_cos_an: None,
            val_loss: v0.loss(),
            val_cos_ap: v0.cos_ap(),
            val_cos_an: v0.cos_an(),
            steps: 0,
            train_seconds: 0.0,
            seconds_per_step: None,
        };
        // A new run starts a new metrics file.
        lion_core::util::write_atomic(out.metrics(), b"")?;
        self.record(out, &mut history, m0, &mut on_event)?;

        let mut rng = SplitMix64::new(cfg.seed);
        let mut global = 0usize;
        let mut best = v0.loss().unwrap_or(f64::INFINITY);
        let mut since_best = 0usize;
        if cfg.patience > 0 {
            // The initial weights are the best until a validation beats them.
            self.encoder.save(&out.dir)?;
        }
        'epochs: for epoch in 1..=cfg.epochs {
            let mut order = train.clone();
            rng.shuffle(&mut order);
            let mut total = BatchStats::default();
            let mut since = 0usize;
            let mut t0 = Instant::now();
            for (step, idx) in order.chunks(cfg.batch_size).enumerate() {
                let neg: Vec<usize> = idx
                    .iter()
                    .map(|&i| draw_negative(&mut rng, &train, i))
                    .collect();
                let ts = Instant::now();
                let s = self.step(data, idx, &neg).map_err(|e| match e {
                    Error::Input(m) => Error::Input(format!(
                        "epoch {epoch} step {}: {m}; {} keeps the last finished epoch",
                        step + 1,
                        out.dir.display()
                    )),
                    e => e,
                })?;
                total.add(&s);
                global += 1;
                since += 1;
                let seconds = ts.elapsed().as_secs_f64();
                tracing::debug!(
                    epoch,
                    step = step + 1,
                    loss = s.loss().unwrap_or(f64::NAN),
                    seconds,
                    "triplet step"
                );
                on_event(&TrainEvent::Step {
                    epoch,
                    step: step + 1,
                    loss: s.loss().unwrap_or(f64::NAN),
                    seconds,
                });
                let epoch_end = step + 1 == steps_per_epoch;
                if !(epoch_end || (cfg.eval_every > 0 && global % cfg.eval_every == 0)) {
                    continue;
                }
                let train_seconds = t0.elapsed().as_secs_f64();
                let v = self.evaluate(data, &val, &val_neg)?;
                let m = EpochMetrics {
                    epoch,
                    step: global,
                    train_loss: total.loss(),
                    train_cos_ap: total.cos_ap(),
                    train_cos_an: total.cos_an(),
                    val_loss: v.loss(),
                    val_cos_ap: v.cos_ap(),
                    val_cos_an: v.cos_an(),
                    steps: since,
                    train_seconds,
                    seconds_per_step: Some(train_seconds / since as f64),
                };
                let val_loss = v.loss().unwrap_or(f64::INFINITY);
                let improved = val_loss < best;
                if improved {
                    best = val_loss;
                    since_best = 0;
                } else {
                    since_best += 1;
                }
                if (cfg.patience > 0 && improved) || (cfg.patience == 0 && epoch_end) {
                    self.encoder.save(&out.dir)?;
                }
                self.record(out, &mut history, m, &mut on_event)?;
                (total, since, t0) = (BatchStats::default(), 0, Instant::now());
                if cfg.patience > 0 && since_best >= cfg.patience {
                    tracing::info!(
                        "validation loss has not improved on {best:.4} for {since_best} \
                         validations: stopped at epoch {epoch} step {global}, the best weights are kept"
                    );
                    break 'epochs;
                }
            }
        }
        if cfg.epochs == 0 {
            self.encoder.save(&out.dir)?;
        }
        Ok(history)
    }

    fn record(
        &self,
        out: &TrainOutputs,
        history: &mut Vec<EpochMetrics>,
        m: EpochMetrics,
        on_event: &mut impl FnMut(&TrainEvent),
    ) -> Result<()> {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.4}"));
        tracing::info!(
            "epoch {} step {}: train loss {} val loss {} val cos(a,p) {} val cos(a,n) {} ({} s/step)",
            m.epoch,
            m.step,
            f(m.train_loss),
            f(m.val_loss),
            f(m.val_cos_ap),
            f(m.val_cos_an),
            f(m.seconds_per_step)
        );
        append_jsonl_atomic(
            out.metrics(),
            &serde_json::to_value(&m).expect("metrics serialise"),
        )?;
        history.push(m.clone());
        draw_curves(out.curves(), history)?;
        on_event(&TrainEvent::Epoch(m));
        Ok(())
    }
}

/// Loss and cosine curves over optimizer steps as a two-panel PNG.
pub fn draw_curves(path: impl AsRef<Path>, history: &[EpochMetrics]) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        history
            .iter()
            .filter_map(|m| f(m).map(|v| (m.step as f64, v)))
            .collect()
    };
    let panels = [
        Panel {
            title: "triplet loss",
            x_label: "optimizer step",
            y_label: "loss",
            series: vec![
                Series {
                    name: "train",
                    points: pts(&|m| m.train_loss),
                },
                Series {
                    name: "val",
                    points: pts(&|m| m.val_loss),
                },
            ],
        },
        Panel {
            title: "cosine to caption embeddings",
            x_label: "optimizer step",
            y_label: "mean cosine",
            series: vec![
                Series {
                    name: "train anchor-positive",
                    points: pts(&|m| m.train_cos_ap),
                },
                Series {
                    name: "train anchor-negative",
                    points: pts(&|m| m.train_cos_an),
                },
                Series {
                    name: "val anchor-positive",
                    points: pts(&|m| m.val_cos_ap),
                },
                Series {
                    name: "val anchor-negative",
                    points: pts(&|m| m.val_cos_an),
                },
            ],
        },
    ];
    draw_png(path, &panels, (640, 420))
}

/// One fine-tuning job of the tag encoder (`lion train-tag-encoder`, the demo's stage 3).
#[derive(Debug, Clone)]
pub struct FineTune<'a> {
    /// Sentence-transformer folder: embeds the chosen captions (frozen) and, without `encoder`,
    /// initialises the tag encoder.
    pub model: &'a Path,
    /// Initial tag encoder folder (default: `model`).
    pub encoder: Option<&'a Path>,
    /// Images as JSON lines: `{"image", "captions", "tags"}`.
    pub data: &'a Path,
    /// Chosen captions (`lion select-captions`); None: selected here with `model`.
    pub chosen: Option<&'a Path>,
    /// Output model folder (weights, `metrics.jsonl`, `curves.png`, `train_config.json`,
    /// [`READER_FRONTIER`]).
    pub out: &'a Path,
    pub config: TripletConfig,
}

/// Runs a [`FineTune`] job: reads the images, selects (or reads) the chosen captions, embeds
/// them with the frozen model, and fits the tag encoder. `on_selected(done, total)` follows the
/// caption selection; `on_event` the training.
pub fn fine_tune(
    job: &FineTune,
    dev: &candle_core::Device,
    on_selected: &mut dyn FnMut(usize, usize),
    on_event: impl FnMut(&TrainEvent),
) -> Result<TrainOutputs> {
    job.config.validate()?;
    let images = crate::records::read_images(job.data)?;
    let data = {
        let frozen = SentenceEmbedder::load(job.model, dev, None).map_err(|e| {
            Error::Input(format!(
                "cannot load model folder {}: {e}",
                job.model.display()
            ))
        })?;
        let chosen = match job.chosen {
            Some(path) => crate::records::read_chosen(path, &images)?,
            None => {
                let total = images.len();
                let mut done = 0;
                crate::centroid::select_captions(&frozen, &images, 64, |n| {
                    done += n;
                    on_selected(done, total)
                })?
            }
        };
        let data = triplet_data(&images, &chosen, &frozen, 64)?;
        write_reader_frontier(job, &images, &chosen, &frozen, &data)?;
        data
    };
    let init = job.encoder.unwrap_or(job.model);
    let encoder = TagEncoder::load(init, dev)
        .map_err(|e| Error::Input(format!("cannot load tag encoder {}: {e}", init.display())))?;
    let mut trainer = TripletTrainer::new(encoder, job.config.clone())?;
    let out = TrainOutputs {
        dir: job.out.to_path_buf(),
    };
    trainer.fit(&data, &out, on_event)?;
    Ok(out)
}

/// Computes the [`ReaderFrontier`] of the job's validation split (the split and negatives
/// [`TripletTrainer::fit`] will use) and writes it as `reader_frontier.json` in the output
/// folder; logs its cos(anchor, positive) at cos(anchor, negative) 0.2.
fn write_reader_frontier(
    job: &FineTune,
    images: &[ImageRecord],
    chosen: &[Chosen],
    frozen: &SentenceEmbedder,
    data: &TripletData,
) -> Result<()> {
    let cfg = &job.config;
    let (train, val) = split(data.len(), cfg.val_fraction, cfg.seed);
    if train.len() < 2 {
        return Ok(()); // fit reports it
    }
    let val_neg = validation_negatives(&train, &val, cfg.seed);
    let mut captions = Vec::with_capacity(val.len());
    for &i in &val {
        let texts: Vec<&str> = images[i].captions.iter().map(String::as_str).collect();
        captions.push(frozen.embed(&texts, 64)?);
    }
    let index: Vec<usize> = val.iter().map(|&i| chosen[i].index).collect();
    let positives = data.positives.to_vec2::<f32>()?;
    let Some(frontier) = ReaderFrontier::compute(
        &captions,
        &index,
        |i| positives[i].as_slice(),
        &train,
        &val_neg,
    ) else {
        return Ok(());
    };
    tracing::info!(
        images = frontier.images,
        cos_ap_at_cos_an_0_2 = frontier.cos_ap_at(0.2),
        "reader frontier of the validation split"
    );
    std::fs::create_dir_all(job.out).map_err(|e| Error::io(job.out, e))?;
    lion_core::util::write_atomic(
        job.out.join(READER_FRONTIER),
        &serde_json::to_vec_pretty(&frontier).expect("frontier serialises"),
    )
}

/// The file [`fine_tune`] writes the [`ReaderFrontier`] to, in the tag encoder's folder.
pub const READER_FRONTIER: &str = "reader_frontier.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_seeded_disjoint_and_complete() {
        let (t, v) = split(100, 0.05, 3);
        assert_eq!(v.len(), 5);
        assert_eq!(t.len(), 95);
        let mut all: Vec<usize> = t.iter().chain(&v).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(split(100, 0.05, 3), (t.clone(), v.clone()));
        assert_ne!(split(100, 0.05, 4).1, v);
        assert_eq!(split(12, 0.05, 0).1.len(), 1);
        assert_eq!(split(12, 0.0, 0).1.len(), 0);
    }

    #[test]
    fn negatives_are_never_the_anchor_and_cover_the_pool() {
        let pool: Vec<usize> = (0..4).collect();
        let mut rng = SplitMix64::new(9);
        let mut seen = [0usize; 4];
        for _ in 0..4000 {
            let j = draw_negative(&mut rng, &pool, 2);
            assert_ne!(j, 2);
            seen[j] += 1;
        }
        assert_eq!(seen[2], 0);
        for i in [0, 1, 3] {
            assert!((1150..1520).contains(&seen[i]), "{seen:?}");
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        for (cfg, word) in [
            (
                TripletConfig {
                    batch_size: 0,
                    ..Default::default()
                },
                "batch size",
            ),
            (
                TripletConfig {
                    p: 0.0,
                    ..Default::default()
                },
                "p must",
            ),
            (
                TripletConfig {
                    val_fraction: 1.0,
                    ..Default::default()
                },
                "val fraction",
            ),
            (
                TripletConfig {
                    lr: f64::NAN,
                    ..Default::default()
                },
                "learning rate",
            ),
        ] {
            let msg = cfg.validate().unwrap_err().to_string();
            assert!(msg.contains(word), "{msg}");
        }
    }
}
