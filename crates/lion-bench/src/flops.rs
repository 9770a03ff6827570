//! Matmul FLOP counts of the GEMM-heavy stages (for GFLOP/s and the fraction of the GEMM rate).

use lion_core::aggregator::AggregatorConfig;
use lion_core::eva_vit::EvaVitConfig;
use lion_core::qformer::QFormerConfig;
use lion_core::t5::T5Config;

/// Matmul FLOPs of the T5 encoder over `b` rows of `s` tokens.
pub fn encoder_flops(cfg: &T5Config, b: usize, s: usize) -> f64 {
    let (d, f, inner) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
    );
    let (b, s) = (b as f64, s as f64);
    let r = cfg
        .adapter
        .map_or(0.0, |a| (a.bottleneck * a.num_adapters) as f64);
    let per_layer = b * s * (8.0 * d * inner + 6.0 * d * f + 4.0 * d * r) + 4.0 * b * s * s * inner;
    per_layer * cfg.num_layers as f64
}

/// Matmul FLOPs of one decoder step for `n` rows with `past` cached positions and `s` encoder
/// positions (LM head included).
pub fn decode_step_flops(cfg: &T5Config, n: usize, past: usize, s: usize) -> f64 {
    let (d, f, inner) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
    );
    let n = n as f64;
    let r = cfg
        .adapter
        .map_or(0.0, |a| (a.bottleneck * a.num_adapters) as f64);
    let k = (past + 1) as f64;
    let per_layer = n
        * (8.0 * d * inner
            + 4.0 * k * inner
            + 4.0 * d * inner
            + 4.0 * s as f64 * inner
            + 6.0 * d * f
            + 4.0 * d * r);
    per_layer * cfg.num_decoder_layers() as f64 + 2.0 * n * d * cfg.vocab_size as f64
}

/// Weight bytes one decoder step reads (any number of rows): every decoder layer's self-attention,
/// cross-attention query and output (the cross K/V are made once per caption), FFN and adapters,
/// and the LM head (the tied embedding when there is none). `block` is the bytes per weight of
/// the layers' linear weights (bf16 2, f32 4, or the quantized format's), `dense` that of the
/// LM head and the adapters' (never quantized).
pub fn decode_step_weight_bytes(cfg: &T5Config, block: f64, dense: f64) -> f64 {
    let (d, f, inner) = (
        cfg.d_model as f64,
        cfg.d_ff as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
    );
    let r = cfg
        .adapter
        .map_or(0.0, |a| (a.bottleneck * a.num_adapters) as f64);
    let per_layer = (6.0 * d * inner + 3.0 * d * f) * block + 2.0 * d * r * 4.0;
    per_layer * cfg.num_decoder_layers() as f64 + d * cfg.vocab_size as f64 * dense
}

/// Matmul FLOPs of the EVA ViT over `b` images, running `blocks` blocks (patch embedding
/// included).
pub fn vit_flops(cfg: &EvaVitConfig, blocks: usize, b: usize) -> f64 {
    let n = cfg.num_tokens() as f64;
    let (d, m) = (cfg.width as f64, cfg.mlp_dim as f64);
    let patch = 2.0 * (n - 1.0) * d * (cfg.in_chans * cfg.patch_size * cfg.patch_size) as f64;
    let per_block = 8.0 * n * d * d + 4.0 * n * n * d + 4.0 * n * d * m;
    b as f64 * (patch + blocks as f64 * per_block)
}

/// Matmul FLOPs of ln_vision + Q-Former (queries only) + t5_proj over `b` images of `n` ViT
/// tokens.
pub fn qformer_flops(cfg: &QFormerConfig, n: usize, b: usize) -> f64 {
    let (h, i, e) = (
        cfg.bert.hidden_size as f64,
        cfg.bert.intermediate_size as f64,
        cfg.encoder_width as f64,
    );
    let (q, n) = (cfg.num_query_token as f64, n as f64);
    let mut total = 2.0 * q * h * cfg.d_model as f64;
    for l in 0..cfg.bert.num_hidden_layers {
        total += 8.0 * q * h * h + 4.0 * q * q * h + 4.0 * q * h * i;
        if l % cfg.cross_attention_freq == 0 {
            total += 4.0 * q * h * h + 4.0 * n * e * h + 4.0 * q * n * h;
        }
    }
    b as f64 * total
}

/// Matmul FLOPs of the vision aggregator + ln_adapter + adapter_proj over `b` images of `n`
/// tokens.
pub fn aggregator_flops(cfg: &AggregatorConfig, n: usize, b: usize) -> f64 {
    let (w, i, n) = (cfg.width as f64, cfg.intermediate_size as f64, n as f64);
    let per_block = 2.0 * (8.0 * n * w * w + 4.0 * n * n * w) + 4.0 * n * w * i;
    let proj = 2.0 * n * w * cfg.proj_hidden as f64
        + 2.0 * n * cfg.proj_hidden as f64 * cfg.d_model as f64;
    b as f64 * (cfg.num_blocks as f64 * per_block + proj)
}
