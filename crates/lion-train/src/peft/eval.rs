//! Validation during training: each task's validation split decoded greedily and scored
//! (CIDEr, VQA accuracy, REC Acc@0.5).

use super::*;

impl PeftTrainer {
    /// Greedy decoding on each task's validation samples, scored with lion-metrics.
    pub fn evaluate(&mut self) -> Result<serde_json::Value> {
        let model = self.eval_model()?;
        let gen = lion_core::generate::GenerationConfig {
            num_beams: 1,
            max_new_tokens: self.cfg.eval_max_new_tokens,
            repetition_penalty: 1.0,
            ..Default::default()
        };
        let mut out = serde_json::Map::new();
        for t in 0..self.cfg.tasks.len() {
            if self.val[t].is_empty() {
                continue;
            }
            let kind = self.cfg.tasks[t].kind;
            let all = self.val[t].clone();
            // Captions: one prediction per image, all of its captions as references.
            let samples: Vec<LionSample> = if kind == Task::Caption {
                let mut seen = std::collections::HashSet::new();
                all.iter()
                    .filter(|s| seen.insert(s.image.clone()))
                    .cloned()
                    .collect()
            } else {
                all.clone()
            };
            let samples: Vec<LionSample> = samples
                .into_iter()
                .take(self.cfg.eval_max_samples)
                .collect();
            let mut preds = vec![];
            for chunk in samples.chunks(self.cfg.batch_size) {
                let mut imgs = vec![];
                for s in chunk {
                    imgs.push(self.image(&s.image)?);
                }
                let reqs: Vec<Request> = chunk.iter().map(Self::request).collect();
                let batch = self.pipe.prepare(&imgs, &reqs)?;
                for ids in model.generate(&batch, &gen)? {
                    preds.push(self.pipe.decode(&ids)?);
                }
            }
            for (s, p) in samples.iter().zip(&preds).take(3) {
                tracing::debug!(task = t, prediction = %p, target = %s.answer, "eval sample");
            }
            let (name, score) = match kind {
                Task::Caption => {
                    let mut c = lion_metrics::cider::CiderD::new();
                    for (s, p) in samples.iter().zip(&preds) {
                        let refs: Vec<String> = all
                            .iter()
                            .filter(|x| x.image == s.image)
                            .map(|x| x.answer.clone())
                            .collect();
                        c.add(p, &refs);
                    }
                    ("cider", c.compute().0)
                }
                Task::Vqa => {
                    let acc: f64 = samples
                        .iter()
                        .zip(&preds)
                        .map(|(s, p)| {
                            // one reference answer: the normalised variant (the official
                            // scorer gives ten identical id-less answers 0 whatever the answer)
                            let gts = vec![lion_metrics::vqa::GtAnswer::new(s.answer.clone()); 10];
                            lion_metrics::vqa::vqa_accuracy_with(
                                lion_metrics::vqa::VqaMode::Normalized,
                                p,
                                &gts,
                            )
                            .unwrap_or(0.0)
                        })
                        .sum();
                    ("vqa_accuracy", acc / samples.len().max(1) as f64)
                }
                Task::Rec => {
                    let mut hits = 0usize;
                    for (s, p) in samples.iter().zip(&preds) {
                        let img = self.image(&s.image)?;
                        let (w, h) = (img.width() as f64, img.height() as f64);
                        let gt = lion_core::bbox::parse(&s.answer, w, h);
                        let pr = lion_core::bbox::parse(p, w, h);
                        if let (Some(g), Some(q)) = (gt, pr) {
                            if lion_metrics::rec::iou(&g, &q) >= 0.5 {
                                hits += 1;
                            }
                        }
                    }
                    ("rec_acc@0.5", hits as f64 / samples.len().max(1) as f64)
                }
            };
            out.insert(format!("task{t}/{name}"), json!(score));
        }
        Ok(serde_json::Value::Object(out))
    }
}
