//! Soft prompts and prompt text.
//!
//! LION puts one learned vector (`soft_prompt_hint`, shape `(d_model,)`) at the `<extra_id_0>`
//! position of the T5 encoder input, next to the RAM tags as text
//! (`lion_t5.py` `_insert_tags` / `_insert_softTagHint`). Three strategies share one type:
//!
//! - [`SoftPrompt::Static`]: LION's `soft_prompt_hint`.
//! - [`SoftPrompt::Dynamic`]: the seed method: a linear projection
//!   (`dynamic_prompt_projection`, `tag_dim -> d_model`) of the tag encoder's embedding of
//!   `"tag: score, tag: score, ..."`.
//! - [`SoftPrompt::Gated`] (ours): `soft_prompt_hint` on slot 0 plus
//!   `dynamic_prompt_gate[j] * projection_j(tag_embedding)` on each of `k` slots, the gate
//!   zero-initialised. With `k = 1` (the default) it starts exactly at static LION and training
//!   can only add. With `k > 1` the prompt text carries `k` placeholders, so the extra `k - 1`
//!   slots start as zero vectors: close to, not exactly, static LION.
//!
//! The tag text stays in the prompt for all three unless switched off in [`PromptTemplates`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::linear::Linear;

/// The T5 sentinel whose embedding row the soft prompt replaces.
pub const PLACEHOLDER: &str = "<extra_id_0>";

/// LION's tag prompt (`lion_t5.py` L131); `{}` takes the tags.
pub const TAG_PROMPT: &str =
    "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. ";

/// Which soft prompt, and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PromptKind {
    Static,
    Dynamic,
    Gated { k: usize },
}

impl PromptKind {
    /// Soft-prompt slots (placeholder tokens) in the prompt text.
    pub fn slots(&self) -> usize {
        match self {
            PromptKind::Gated { k } => *k,
            _ => 1,
        }
    }

    pub fn needs_tag_embedding(&self) -> bool {
        !matches!(self, PromptKind::Static)
    }

    /// A prompt name as the CLI and `lion train` configs write it: `static`, `dynamic`, `gated`
    /// (k = 1), `gated:K` (K >= 1) or `none` (no soft prompt: None). The error names the value.
    pub fn parse_name(s: &str) -> std::result::Result<Option<PromptKind>, String> {
        Ok(match s {
            "none" => None,
            "static" => Some(PromptKind::Static),
            "dynamic" => Some(PromptKind::Dynamic),
            "gated" => Some(PromptKind::Gated { k: 1 }),
            other => match other.strip_prefix("gated:").map(str::parse::<usize>) {
                Some(Ok(k)) if k > 0 => Some(PromptKind::Gated { k }),
                _ => {
                    return Err(format!(
                        "`{other}`: expected static, dynamic, gated, gated:K or none"
                    ))
                }
            },
        })
    }
}

/// A soft prompt: one or `k` vectors of width `d_model` per image.
#[derive(Debug, Clone)]
pub enum SoftPrompt {
    Static {
        soft_prompt_hint: Tensor,
    },
    Dynamic {
        projection: Linear,
    },
    Gated {
        soft_prompt_hint: Tensor,
        gate: Tensor,
        projection: Linear,
        k: usize,
        d_model: usize,
    },
}

fn projection(tag_dim: usize, out: usize, vb: VarBuilder) -> Result<Linear> {
    // nn.Linear's default init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    let bound = 1.0 / (tag_dim as f64).sqrt();
    let w = vb.get_with_hints(
        (out, tag_dim),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let b = vb.get_with_hints(
        out,
        "bias",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    Ok(Linear::new(w, Some(b)))
}

impl SoftPrompt {
    /// Keys: `soft_prompt_hint` (d_model,), `dynamic_prompt_projection.{weight,bias}`,
    /// `dynamic_prompt_gate` (k,). `tag_dim` is the tag encoder's width.
    pub fn new(kind: PromptKind, d_model: usize, tag_dim: usize, vb: VarBuilder) -> Result<Self> {
        // LION: nn.Parameter(torch.randn(d_model) * initializer_factor), factor 1.0
        let hint = |vb: &VarBuilder| {
            vb.get_with_hints(
                d_model,
                "soft_prompt_hint",
                Init::Randn {
                    mean: 0.,
                    stdev: 1.,
                },
            )
        };
        Ok(match kind {
            PromptKind::Static => SoftPrompt::Static {
                soft_prompt_hint: hint(&vb)?,
            },
            PromptKind::Dynamic => SoftPrompt::Dynamic {
                projection: projection(tag_dim, d_model, vb.pp("dynamic_prompt_projection"))?,
            },
            PromptKind::Gated { k } => {
                if k == 0 {
                    candle_core::bail!("gated soft prompt needs k >= 1 slots")
                }
                SoftPrompt::Gated {
                    soft_prompt_hint: hint(&vb)?,
                    gate: vb.get_with_hints(k, "dynamic_prompt_gate", Init::Const(0.))?,
                    projection: projection(
                        tag_dim,
                        k * d_model,
                        vb.pp("dynamic_prompt_projection"),
                    )?,
                    k,
                    d_model,
                }
            }
        })
    }

    pub fn kind(&self) -> PromptKind {
        match self {
            SoftPrompt::Static { .. } => PromptKind::Static,
            SoftPrompt::Dynamic { .. } => PromptKind::Dynamic,
            SoftPrompt::Gated { k, .. } => PromptKind::Gated { k: *k },
        }
    }

    /// tag_embedding: (b, tag_dim), required unless static; `batch` is b
    /// -> (b, slots, d_model)
    pub fn forward(&self, tag_embedding: Option<&Tensor>, batch: usize) -> Result<Tensor> {
        let need = || {
            tag_embedding.ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{:?} soft prompt needs a tag embedding per image",
                    self.kind()
                ))
            })
        };
        match self {
            SoftPrompt::Static { soft_prompt_hint } => {
                let d = soft_prompt_hint.dim(0)?;
                soft_prompt_hint
                    .reshape((1, 1, d))?
                    .broadcast_as((batch, 1, d))?
                    .contiguous()
            }
            SoftPrompt::Dynamic { projection } => {
                let e = need()?;
                check_batch(e, batch)?;
                projection.forward(e)?.unsqueeze(1)
            }
            SoftPrompt::Gated {
                soft_prompt_hint,
                gate,
                projection,
                k,
                d_model,
            } => {
                let e = need()?;
                check_batch(e, batch)?;
                let dynamic = projection.forward(e)?.reshape((batch, *k, *d_model))?;
                let gated = dynamic.broadcast_mul(&gate.reshape((1, *k, 1))?)?;
                // slot 0 carries the static hint; other slots only the gated dynamic part
                let mut base = vec![soft_prompt_hint.unsqueeze(0)?];
                if *k > 1 {
                    base.push(Tensor::zeros(
                        (*k - 1, *d_model),
                        soft_prompt_hint.dtype(),
                        soft_prompt_hint.device(),
                    )?);
                }
                let base = Tensor::cat(&base, 0)?.unsqueeze(0)?;
                gated.broadcast_add(&base)
            }
        }
    }
}

fn check_batch(e: &Tensor, batch: usize) -> Result<()> {
    if e.dim(0)? != batch {
        candle_core::bail!(
            "tag embeddings for {} images given for a batch of {batch}",
            e.dim(0)?
        )
    }
    Ok(())
}

/// Replaces the embedding rows at placeholder positions by the soft-prompt slots, in order of
/// appearance. A row whose placeholder was truncated away (left truncation of long tag lists)
/// keeps its embeddings; a row with another count than `slots` is an error.
///
/// embeds: (b, t, d); ids: token ids per row (b rows of <= t, right padding implied);
/// prompt: (b, slots, d) -> (b, t, d)
pub fn insert_soft_prompt(
    embeds: &Tensor,
    ids: &[Vec<u32>],
    placeholder_id: u32,
    prompt: &Tensor,
) -> Result<Tensor> {
    let (b, t, _d) = embeds.dims3()?;
    let (pb, slots, _) = prompt.dims3()?;
    if ids.len() != b || pb != b {
        candle_core::bail!(
            "soft prompt: {} id rows and {pb} prompts for a batch of {b}",
            ids.len()
        )
    }
    // select[b, pos, slot] = 1 where position pos holds the slot-th placeholder
    let mut select = vec![0f32; b * t * slots];
    let mut keep = vec![1f32; b * t];
    for (i, row) in ids.iter().enumerate() {
        // rows are unpadded (`Encoded::ids`): shorter rows are right-padded in `embeds`
        if row.len() > t {
            candle_core::bail!(
                "soft prompt: id row {i} has {} tokens, embeddings {t}",
                row.len()
            )
        }
        let positions: Vec<usize> = (0..row.len())
            .filter(|&p| row[p] == placeholder_id)
            .collect();
        if positions.is_empty() {
            tracing::debug!(
                row = i,
                "soft-prompt placeholder truncated away; row keeps its text"
            );
            continue;
        }
        if positions.len() != slots {
            candle_core::bail!(
                "soft prompt: row {i} has {} placeholder tokens, the prompt has {slots} slots",
                positions.len()
            )
        }
        for (slot, &p) in positions.iter().enumerate() {
            select[(i * t + p) * slots + slot] = 1.0;
            keep[i * t + p] = 0.0;
        }
    }
    let dev = embeds.device();
    let dtype = embeds.dtype();
    let select = Tensor::from_vec(select, (b, t, slots), dev)?.to_dtype(dtype)?;
    let keep = Tensor::from_vec(keep, (b, t, 1), dev)?.to_dtype(dtype)?;
    embeds
        .broadcast_mul(&keep)?
        .add(&select.matmul(&prompt.to_dtype(dtype)?.contiguous()?)?)
}

pub use crate::task::Task;

/// Prompt text per task; every field can be overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptTemplates {
    /// Tag prompt with `{}` for the tags; must contain the placeholder. Empty = no tag text.
    pub tags: String,
    /// Captioning instruction (LION playground).
    pub caption: String,
    /// VQA instruction with `{}` for the question. Upstream's is unknown; InstructBLIP's form.
    pub vqa: String,
    /// REC instruction with `{}` for the expression (LION playground).
    pub rec: String,
    /// Whether the tag list is written out as text (true in LION).
    pub tag_text: bool,
}

impl Default for PromptTemplates {
    fn default() -> Self {
        Self {
            tags: TAG_PROMPT.to_string(),
            caption: "Please describe the image using a single short sentence.".to_string(),
            vqa: "Question: {} Short answer:".to_string(),
            rec: "In the image <image>, can you locate {} and let me know its coordinates?"
                .to_string(),
            tag_text: true,
        }
    }
}

impl PromptTemplates {
    /// The instruction for a task; `text` is the question (VQA) or expression (REC); for a
    /// caption a non-empty `text` replaces the captioning instruction.
    pub fn instruction(&self, task: Task, text: &str) -> String {
        match task {
            Task::Caption if !text.is_empty() => text.to_string(),
            Task::Caption => self.caption.clone(),
            Task::Vqa => self.vqa.replacen("{}", text, 1),
            Task::Rec => self.rec.replacen("{}", text, 1),
        }
    }

    /// The full encoder text: tag prompt (with `slots` placeholders) + instruction.
    /// `tags` is the formatted tag list ([`format_tags`]).
    pub fn encoder_text(&self, slots: usize, tags: &str, instruction: &str) -> String {
        let tag_part = if self.tag_text {
            self.tags.replacen("{}", tags, 1)
        } else {
            format!("{PLACEHOLDER} ")
        };
        let extra: String = (1..slots).map(|_| format!("{PLACEHOLDER} ")).collect();
        let tag_part = tag_part.replacen(PLACEHOLDER, &format!("{extra}{PLACEHOLDER}"), 1);
        format!("{tag_part}{instruction}")
    }
}

/// LION's tag string: tags in tag-list order, `", "`-joined.
pub fn format_tags<S: AsRef<str>>(tags: &[S]) -> String {
    tags.iter()
        .map(|t| t.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Dynamic LION's tag-encoder input (`crate::tags::format_list`).
pub use crate::tags::format_list as format_tag_scores;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_names_parse_or_are_named_in_the_error() {
        for (name, kind) in [
            ("none", None),
            ("static", Some(PromptKind::Static)),
            ("dynamic", Some(PromptKind::Dynamic)),
            ("gated", Some(PromptKind::Gated { k: 1 })),
            ("gated:3", Some(PromptKind::Gated { k: 3 })),
        ] {
            assert_eq!(PromptKind::parse_name(name), Ok(kind), "{name}");
        }
        for bad in ["gated:0", "gated:x", "Static", ""] {
            let e = PromptKind::parse_name(bad).unwrap_err();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
