//! What a step reports ([`StepRecord`]), `metrics.jsonl` truncation on resume and `loss.png`.

use super::*;

/// One training step's record (a line of `metrics.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: u64,
    pub task: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub samples: usize,
}

/// Keeps the lines of `metrics.jsonl` at or before `step` (after a resume).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    lion_core::util::write_atomic(path, kept.as_bytes())
}

/// Draws `loss.png` from `metrics.jsonl` (train loss per step, by task; eval scores).
pub fn draw_loss_curves(metrics: &Path, png: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut loss = vec![];
    let mut lr = vec![];
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if v.get("kind").and_then(|k| k.as_str()) == Some("train") {
            let s = v["step"].as_f64().unwrap_or(0.0);
            if let Some(x) = v["loss"].as_f64() {
                loss.push((s, x));
            }
            if let Some(x) = v["lr"].as_f64() {
                lr.push((s, x));
            }
        }
    }
    use crate::plot::{draw_png, Panel, Series};
    draw_png(
        png,
        &[
            Panel {
                title: "training loss",
                x_label: "step",
                y_label: "loss",
                series: vec![Series {
                    name: "train",
                    points: loss,
                }],
            },
            Panel {
                title: "learning rate",
                x_label: "step",
                y_label: "lr",
                series: vec![Series {
                    name: "lr",
                    points: lr,
                }],
            },
        ],
        (640, 360),
    )
}
