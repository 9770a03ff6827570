//! Named model sizes. Any preset can be built with random weights for smoke tests and benchmarks.
//!
//! | preset | ViT | Q-Former | T5 | use |
//! |---|---|---|---|---|
//! | `tiny` | 56 px, 4 x 32 | 2 x 32, 4 queries | 2+2 x 32, vocab 200 | tests |
//! | `base` | ViT-B/16 (12 x 768) | bert-base, 32 queries | flan-t5-base | benchmarks |
//! | `lion-4b` | EVA ViT-g (39 x 1408) | bert-base, 32 queries | flan-t5-xl | LION-4B |
//! | `lion-12b` | EVA ViT-g | bert-base, 32 queries | flan-t5-xxl | LION-12B |

use crate::aggregator::AggregatorConfig;
use crate::bert::BertConfig;
use crate::eva_vit::EvaVitConfig;
use crate::lion::LionConfig;
use crate::ops::Activation;
use crate::prompt::{PromptKind, PromptTemplates};
use crate::qformer::QFormerConfig;
use crate::t5::T5Config;
use crate::{Error, Result};

/// The preset names, for help texts and errors.
pub const PRESETS: &[&str] = &["tiny", "shapes", "base", "lion-4b", "lion-12b"];

/// all-MiniLM-L6-v2's width: the default tag encoder.
pub const MINILM_DIM: usize = 384;

/// A Flan-T5 of the given size as LION uses it: gated exact-erf GELU, untied head, two adapters.
pub fn flan_t5(
    vocab: usize,
    d: usize,
    d_ff: usize,
    layers: usize,
    heads: usize,
    d_kv: usize,
) -> T5Config {
    T5Config {
        vocab_size: vocab,
        d_model: d,
        d_kv,
        d_ff,
        num_layers: layers,
        num_decoder_layers: Some(layers),
        num_heads: heads,
        relative_attention_num_buckets: 32,
        relative_attention_max_distance: 128,
        dropout_rate: 0.1,
        layer_norm_epsilon: 1e-6,
        feed_forward_proj: "gated-gelu".into(),
        dense_act_fn: None,
        tie_word_embeddings: false,
        decoder_start_token_id: Some(0),
        pad_token_id: 0,
        eos_token_id: 1,
        adapter: None,
    }
    .with_exact_gelu()
    .with_adapters(2)
}

fn bert(vocab: usize, hidden: usize, layers: usize, heads: usize, ff: usize) -> BertConfig {
    BertConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: ff,
        hidden_act: Activation::Gelu,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 512,
        type_vocab_size: 0,
        layer_norm_eps: 1e-12,
        pad_token_id: 0,
        position_embedding_type: "absolute".into(),
    }
}

/// LION's layer choice (38, 28, 18 of 39) scaled to `depth` blocks.
fn source_layers(depth: usize) -> Vec<usize> {
    [38usize, 28, 18]
        .iter()
        .map(|&l| {
            ((l + 1) * depth)
                .div_ceil(39)
                .saturating_sub(1)
                .min(depth - 1)
        })
        .collect()
}

/// Builds a preset with the given soft prompt.
pub fn preset(name: &str, prompt: Option<PromptKind>) -> Result<LionConfig> {
    let cfg = match name {
        "tiny" => {
            let d = 32;
            let vit = EvaVitConfig {
                img_size: 56,
                patch_size: 14,
                in_chans: 3,
                width: 32,
                depth: 4,
                checkpoint_depth: None,
                num_heads: 4,
                mlp_dim: 64,
                layer_norm_eps: 1e-6,
                frozen: true,
            };
            LionConfig {
                qformer: Some(QFormerConfig {
                    bert: bert(30523, 32, 2, 4, 64),
                    encoder_width: 32,
                    cross_attention_freq: 2,
                    num_query_token: 4,
                    d_model: d,
                    ln_vision_eps: 1e-5,
                }),
                aggregator: Some(AggregatorConfig {
                    width: 32,
                    num_heads: 4,
                    intermediate_size: 48,
                    num_blocks: 2,
                    proj_hidden: 128,
                    d_model: d,
                    layer_norm_eps: 1e-12,
                    ln_adapter_eps: 1e-5,
                    dropout: 0.1,
                    source_layers: source_layers(vit.depth),
                }),
                vit,
                t5: flan_t5(200, d, 64, 2, 4, 8),
                prompt,
                tag_dim: MINILM_DIM,
                max_txt_len: 128,
                max_output_txt_len: 128,
                templates: PromptTemplates::default(),
            }
        }
        "shapes" => {
            // ShapesWorld's demo model (`lion demo`): 96-px images in an 8x8 patch grid, so the
            // region-level path can place boxes; small enough to pretrain and ship (< 20 MB).
            let d = 64;
            let vit = EvaVitConfig {
                img_size: 96,
                patch_size: 12,
                in_chans: 3,
                width: 64,
                depth: 4,
                checkpoint_depth: None,
                num_heads: 4,
                mlp_dim: 128,
                layer_norm_eps: 1e-6,
                frozen: true,
            };
            LionConfig {
                qformer: Some(QFormerConfig {
                    bert: bert(30523, 64, 2, 4, 128),
                    encoder_width: 64,
                    cross_attention_freq: 1,
                    num_query_token: 8,
                    d_model: d,
                    ln_vision_eps: 1e-5,
                }),
                aggregator: Some(AggregatorConfig {
                    width: 64,
                    num_heads: 4,
                    intermediate_size: 128,
                    num_blocks: 2,
                    proj_hidden: 128,
                    d_model: d,
                    layer_norm_eps: 1e-12,
                    ln_adapter_eps: 1e-5,
                    dropout: 0.1,
                    source_layers: source_layers(vit.depth),
                }),
                vit,
                t5: flan_t5(431, d, 128, 2, 4, 16),
                prompt,
                tag_dim: MINILM_DIM,
                max_txt_len: 96,
                max_output_txt_len: 40,
                templates: PromptTemplates::default(),
            }
        }
        "base" => {
            let d = 768;
            let vit = EvaVitConfig {
                img_size: 224,
                patch_size: 16,
                in_chans: 3,
                width: 768,
                depth: 12,
                checkpoint_depth: None,
                num_heads: 12,
                mlp_dim: 3072,
                layer_norm_eps: 1e-6,
                frozen: true,
            };
            let mut q = QFormerConfig::lion(d);
            q.encoder_width = 768;
            let mut a = AggregatorConfig::lion(d);
            a.width = 768;
            a.num_heads = 12;
            a.proj_hidden = 4 * 768;
            a.source_layers = source_layers(vit.depth);
            LionConfig {
                vit,
                qformer: Some(q),
                aggregator: Some(a),
                t5: flan_t5(32128, d, 2048, 12, 12, 64),
                prompt,
                tag_dim: MINILM_DIM,
                max_txt_len: 128,
                max_output_txt_len: 128,
                templates: PromptTemplates::default(),
            }
        }
        "lion-4b" | "lion-12b" => {
            let t5 = if name == "lion-4b" {
                flan_t5(32128, 2048, 5120, 24, 32, 64)
            } else {
                flan_t5(32128, 4096, 10240, 24, 64, 64)
            };
            let d = t5.d_model;
            LionConfig {
                vit: EvaVitConfig::vit_g(),
                qformer: Some(QFormerConfig::lion(d)),
                aggregator: Some(AggregatorConfig::lion(d)),
                t5,
                prompt,
                tag_dim: MINILM_DIM,
                max_txt_len: 128,
                max_output_txt_len: 128,
                templates: PromptTemplates::default(),
            }
        }
        other => {
            return Err(Error::config(
                "preset",
                format!("unknown preset `{other}`; known: {}", PRESETS.join(", ")),
            ))
        }
    };
    cfg.validate()
        .map_err(|m| Error::config(format!("preset {name}"), m))?;
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lion_layers_are_kept_at_39_and_scaled_below() {
        assert_eq!(source_layers(39), vec![38, 28, 18]);
        assert_eq!(source_layers(12), vec![11, 8, 5]);
        assert_eq!(source_layers(4), vec![3, 2, 1]);
    }

    #[test]
    fn every_preset_validates() {
        for p in PRESETS {
            let cfg = preset(p, Some(PromptKind::Static)).unwrap();
            assert_eq!(cfg.vit_layers()[0], cfg.vit.depth - 1);
        }
        let c = preset("lion-4b", None).unwrap();
        assert_eq!(c.num_visual_tokens(), 32 + 257);
        assert_eq!(c.vit.mlp_dim, 6144);
        assert!(preset("lion-7b", None)
            .unwrap_err()
            .to_string()
            .contains("unknown preset"));
    }
}
