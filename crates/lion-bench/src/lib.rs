//! `lion bench`: per-stage timing of the model with random weights, written so that
//! `scripts/bench_torch.py` can run the same workloads in PyTorch eager on the same weights and
//! inputs.
//!
//! [`prepare`] writes a random-init checkpoint (`t5.safetensors`, HF key names), the inputs
//! (`inputs.safetensors`) and the settings (`setup.json`) into a folder; [`run`] loads the model
//! back from that checkpoint and times each stage, with a warm-up run first. The inference stages
//! run it frozen (no autograd graph, as `lion caption`); the training step runs a T5 over the
//! same weight storage whose adapters are trainable copies. Stages:
//!
//! | stage | what |
//! |---|---|
//! | `gemm` | one (n x n) @ (n x n) f32 matmul: the machine's GEMM rate |
//! | `stream` | summing `stream_mib` MiB of f32 in parallel: the machine's memory read rate (CPU) |
//! | `t5_encoder` | T5 encoder, batch 1, `visual_tokens + text_tokens` input embeddings |
//! | `decode_token` | one KV-cached decoder step for `beams` rows sharing one input's cross-attention K/V, as beam search runs it (mean over steps 2..=`new_tokens`; PyTorch: HF's repeated encoder states) |
//! | `caption_beam5` | encoder + beam search of exactly `new_tokens` tokens, batch 1 (EOS banned) |
//! | `caption_batch` | the same at batch `batch` (throughput = batch / time) |
//! | `train_step` | PEFT step: forward, masked CE, backward, AdamW over the adapters only |
//! | `tagenc_triplet` | one triplet step of the MiniLM tag encoder (when the model folder exists) |
//! | `vit` | the preset's EVA ViT, batch 1, up to the blocks LION needs (last; aggregator sources) |
//! | `qformer` | ln_vision + Q-Former (queries only, no instruction text) + t5_proj, batch 1 |
//! | `aggregator` | vision aggregator + ln_adapter + adapter_proj, batch 1 |
//! | `caption_e2e` | [`LionModel::generate`]: pixels -> ViT -> Q-Former + aggregator -> T5 beam search |
//! | `caption_e2e_batch` | the same at batch `batch` (throughput) |
//! | `tagger` | RAM pixels -> 4585 tag probabilities, batch 1 (`tagger.safetensors`, upstream keys) |
//!
//! The vision stages and the end-to-end captions run a [`LionModel`] (the `lion caption` code)
//! built from `vision.safetensors` (LION key names: `visual_encoder.*`, `Qformer.bert.*`,
//! `query_tokens`, `ln_vision`, `t5_proj`, `fusion_adapter.*`, `ln_adapter`, `adapter_proj`) and
//! the same `t5.safetensors` under `t5_model.`; when any of them is asked for, the T5 stages use
//! that model's T5 (so peak memory includes the vision weights on both sides). The end-to-end
//! input is `pixel_values` (a fixed random preprocessed batch) and `prompt_ids` (`text_tokens`
//! random prompt tokens after the visual tokens). Their outputs (a strided sample of each) and
//! the generated tokens go into the report's `check` so `bench_torch.py --check` can compare.
//!
//! GEMM-heavy stages report their matmul GFLOP count, the achieved GFLOP/s and its fraction of
//! the `gemm` rate. `decode_token` also reports the weight bytes one step reads, their rate and
//! its fraction of the `stream` rate (decoding a few rows is bound by reading the weights).
//! Peak memory per stage is the resident-set high-water mark (Linux
//! `/proc/self/status` `VmHWM`, reset before each stage through `/proc/self/clear_refs`).
//!
//! Modules: [`setup`] (presets, sizes), [`prepare`] (weights and inputs), [`stages`] (the timed
//! runs), [`measure`] (timing, memory), [`flops`], [`report`] (results and the table).

pub mod flops;
pub mod measure;
pub mod prepare;
pub mod report;
pub mod setup;
pub mod stages;

pub use flops::*;
pub use measure::*;
pub use prepare::*;
pub use report::*;
pub use setup::*;
pub use stages::*;

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn flop_counts_match_published_sizes() {
        // ViT-B/16 at 224: ~17.6 G multiply-adds (DeiT/timm), i.e. ~35 GFLOP
        let base = lion_preset("base", &t5_preset("base").unwrap()).unwrap();
        let f = vit_flops(&base.vit, 12, 1) / 1e9;
        assert!((33.0..37.0).contains(&f), "ViT-B/16 {f} GFLOP");
        assert_eq!(
            vit_flops(&base.vit, 12, 2),
            2.0 * vit_flops(&base.vit, 12, 1)
        );
        let q = qformer_flops(base.qformer.as_ref().unwrap(), 257, 1);
        let a = aggregator_flops(base.aggregator.as_ref().unwrap(), 257, 1);
        assert!(
            q > 0.0 && a > q,
            "aggregator (257 tokens) {a} vs Q-Former (32 queries) {q}"
        );
    }

    /// One LION-4B decoding step reads flan-t5-xl's decoder (24 layers: self-attention, the
    /// cross-attention's query and output, the gated FFN; ~1.36 G weights) and the 32128-row LM
    /// head: ~2.9 GB in bf16, about twice that in f32.
    #[test]
    fn decode_step_reads_the_decoder_and_the_lm_head() {
        let xl = t5_preset("lion-4b").unwrap();
        let bf16 = decode_step_weight_bytes(&xl, 2.0, 2.0) / 1e9;
        assert!((2.7..3.1).contains(&bf16), "{bf16} GB");
        let f32 = decode_step_weight_bytes(&xl, 4.0, 4.0) / 1e9;
        // (the adapters are f32 in both: a little under twice)
        assert!((1.95..2.0).contains(&(f32 / bf16)), "{f32} vs {bf16}");
    }

    #[test]
    fn unknown_stage_is_named() {
        let mut z = BenchSetup::new("tiny").unwrap();
        z.stream_mib = 0;
        let e = z.validate().unwrap_err().to_string();
        assert!(e.contains("stream_mib"), "{e}");
        let mut s = BenchSetup::new("tiny").unwrap();
        s.stages = vec!["vit".into(), "vitt".into()];
        let e = s.validate().unwrap_err().to_string();
        assert!(
            e.contains("\"vitt\"") && e.contains("caption_e2e_batch"),
            "{e}"
        );
    }

    /// The real-size path at the tiny size: the streamed bf16 weights (keys recorded without
    /// allocating) load strictly into the LION model, the one-caption stages run on them in bf16
    /// and q8_0, with the model load measured; the real-size presets validate their stage list.
    #[test]
    fn streamed_weights_run_the_one_caption_stages() {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = BenchSetup::new("tiny").unwrap();
        setup.repeats = 1;
        setup.stages = ["t5_encoder", "decode_token", "vit", "caption_e2e"]
            .map(String::from)
            .to_vec();
        setup.tagger = None;
        prepare(&setup, dir.path()).unwrap();
        prepare_real_size(&setup, dir.path()).unwrap();
        let st =
            lion_core::weights::Checkpoint::open(dir.path().join("vision.safetensors")).unwrap();
        let key = st
            .keys()
            .find(|k| k.ends_with("attn.qkv.weight"))
            .unwrap()
            .to_string();
        assert_eq!(st.dtype(&key), Some(DType::BF16));
        for q in [None, Some(lion_core::cpu::Quantize::Q8_0)] {
            let mut s = setup.clone();
            s.dtype = lion_core::cpu::WeightDtype::Bf16;
            s.quantize = q;
            std::fs::write(
                dir.path().join("setup.json"),
                serde_json::to_vec(&s).unwrap(),
            )
            .unwrap();
            let report = run(dir.path()).unwrap();
            let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, setup.stages, "{q:?}");
            assert!(report.load_s.unwrap() > 0.0 && report.load_peak_rss_mib.unwrap() > 0.0);
            assert!(table(&report).contains("model load"));
        }
        let real = BenchSetup::new("lion-4b").unwrap();
        assert!(real.real_size() && real.tagger.is_none() && real.wants("caption_e2e"));
        assert!(!real.wants("train_step"));
        let mut bad = real.clone();
        bad.stages = vec!["train_step".into()];
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("train_step"));
    }

    /// Every stage but the tag encoder's at the tiny preset, through prepare + run.
    #[test]
    fn tiny_bench_runs_every_stage() {
        let dir = tempfile::tempdir().unwrap();
        let mut setup = BenchSetup::new("tiny").unwrap();
        setup.repeats = 1;
        setup.stages = STAGES
            .iter()
            .filter(|s| **s != "tagenc_triplet")
            .map(|s| s.to_string())
            .collect();
        prepare(&setup, dir.path()).unwrap();
        let report = run(dir.path()).unwrap();
        let names: Vec<&str> = report.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, setup.stages);
        for s in &report.stages {
            let want = if ["gemm", "stream"].contains(&s.name.as_str()) {
                5
            } else {
                1
            };
            assert!(s.median_s > 0.0 && s.runs_s.len() == want, "{}", s.name);
        }
        let get = |n: &str| report.stages.iter().find(|s| s.name == n).unwrap();
        let lion = setup.lion.as_ref().unwrap();
        let vit = get("vit");
        assert!(vit.frac_of_gemm.is_some());
        let stream = get("stream");
        assert_eq!(stream.gbytes, Some(16.0 * (1 << 20) as f64 / 1e9));
        let decode = get("decode_token");
        assert!(decode.gbps.unwrap() > 0.0 && decode.frac_of_stream.is_some());
        assert!(table(&report).contains("% of stream"));
        // one sample per ViT block LION uses: the last and the aggregator's sources
        assert_eq!(vit.check.len(), lion.vit_layers().len());
        for (k, v) in vit.check.iter().chain(&get("aggregator").check) {
            assert_eq!(v.len(), CHECK_SAMPLES, "{k}");
            assert!(v.iter().all(|x| x.is_finite()), "{k}");
            assert!(v.iter().any(|&x| x != v[0]), "{k} is constant");
        }
        // Q-Former: 4 queries x d_model 64 values = 256 -> 64 samples
        assert_eq!(get("qformer").check["output"].len(), CHECK_SAMPLES);
        let e2e = get("caption_e2e_batch");
        assert_eq!(e2e.check.len(), setup.batch + 1);
        assert_eq!(e2e.check["encoder"].len(), CHECK_SAMPLES);
        for (_, t) in e2e.check.iter().filter(|(k, _)| k.starts_with("tokens")) {
            assert_eq!(t.len(), setup.new_tokens);
            assert!(t
                .iter()
                .all(|&x| x >= 0.0 && x < setup.t5.vocab_size as f64));
        }
        assert_eq!(get("caption_e2e").check.len(), 2);
        assert!(table(&report).contains("caption_e2e_batch"));
        // the tagger: 4585 probabilities -> 64 samples in (0, 1), not all equal
        let probs = &get("tagger").check["probs"];
        assert_eq!(probs.len(), CHECK_SAMPLES);
        assert!(probs.iter().all(|&p| p > 0.0 && p < 1.0), "{probs:?}");
        assert!(
            probs.iter().any(|&p| p != probs[0]),
            "constant tag probabilities"
        );
        // the training step (which ran before) left the shared weights as loaded
        let mut alone = setup.clone();
        alone.stages = vec!["caption_e2e_batch".into()];
        // same weights and inputs, new settings (as `lion bench` reuses a folder)
        std::fs::write(
            dir.path().join("setup.json"),
            serde_json::to_vec(&alone).unwrap(),
        )
        .unwrap();
        let again = run(dir.path()).unwrap();
        assert_eq!(again.stages[0].check, e2e.check);
    }
}
