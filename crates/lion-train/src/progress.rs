//! How long work shows its progress without the library drawing anything: a [`Progress`] hands
//! out [`Bar`]s; the `lion` binary draws them on the terminal, tests and library users may pass
//! [`Silent`]. Training and the demo report through it.

/// One task's progress: a position out of a total, and a short message (loss, rate).
pub trait Bar: Send + Sync {
    fn set_position(&self, pos: u64);
    fn set_message(&self, msg: String);
    /// The task finished (the bar may disappear).
    fn finish(&self);
    /// The task stopped with an error (the bar may stay, showing where).
    fn abandon(&self) {
        self.finish()
    }
}

/// Makes a bar for each long task.
pub trait Progress: Sync {
    fn bar(&self, label: &str, total: u64) -> Box<dyn Bar>;
}

/// Shows nothing.
pub struct Silent;

struct NoBar;

impl Bar for NoBar {
    fn set_position(&self, _: u64) {}
    fn set_message(&self, _: String) {}
    fn finish(&self) {}
}

impl Progress for Silent {
    fn bar(&self, _: &str, _: u64) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
}

/// A `(done, total)` callback (what `lion_eval`'s predictions report) that moves `bar`, and
/// finishes it when `done` reaches `total`.
pub fn callback(bar: Box<dyn Bar>) -> std::sync::Arc<dyn Fn(u64, u64) + Send + Sync> {
    let bar: std::sync::Arc<dyn Bar> = bar.into();
    std::sync::Arc::new(move |done, total| {
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    })
}

/// [`crate::triplet_trainer::fine_tune`] with its progress shown: caption selection, then the
/// training steps with the loss (`lion train-tag-encoder` and the demo's stage 3).
pub fn fine_tune_showing(
    job: &crate::triplet_trainer::FineTune,
    dev: &candle_core::Device,
    progress: &dyn Progress,
) -> lion_core::Result<crate::triplet_trainer::TrainOutputs> {
    use crate::triplet_trainer::TrainEvent;
    let mut select: Option<Box<dyn Bar>> = None;
    let mut train: Option<Box<dyn Bar>> = None;
    let mut step = 0u64;
    let epochs = job.config.epochs;
    let out = crate::triplet_trainer::fine_tune(
        job,
        dev,
        &mut |done, total| {
            let pb = select.get_or_insert_with(|| progress.bar("selecting captions", total as u64));
            pb.set_position(done as u64);
            if done >= total {
                pb.finish();
            }
        },
        |ev| match ev {
            TrainEvent::Start {
                steps_per_epoch, ..
            } => {
                train = Some(progress.bar("training", (*steps_per_epoch * epochs) as u64));
            }
            TrainEvent::Step { epoch, loss, .. } => {
                if let Some(pb) = &train {
                    step += 1;
                    pb.set_message(format!("epoch {epoch} loss {loss:.4}"));
                    pb.set_position(step);
                }
            }
            TrainEvent::Epoch(_) => {}
        },
    );
    if let Some(pb) = train {
        pb.finish();
    }
    out
}

/// [`crate::peft::train`] with its progress shown (loss, learning rate, samples/s): `lion
/// train` and the demo's training stages. Returns the output folder.
pub fn train_showing(
    cfg: crate::peft::PeftConfig,
    resume: bool,
    dev: &candle_core::Device,
    progress: &dyn Progress,
) -> crate::error::Result<std::path::PathBuf> {
    use crate::peft::TrainEvent;
    let pb = progress.bar("train", cfg.steps);
    let out = crate::peft::train(cfg, resume, dev, &mut |e| match e {
        TrainEvent::Started { step, .. } => pb.set_position(step),
        TrainEvent::Step {
            record,
            samples_per_s,
        } => {
            pb.set_position(record.step);
            pb.set_message(format!(
                "loss {:.4} lr {:.2e} {:.1} samples/s",
                record.loss, record.lr, samples_per_s
            ));
        }
        TrainEvent::Evaluated { .. } => {}
    });
    match &out {
        Ok(_) => pb.finish(),
        Err(_) => pb.abandon(),
    }
    out
}
