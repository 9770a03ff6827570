//! Reduced weight formats and streamed random weights: the quantized linear layer against the
//! dense one, a quantized T5 against its f32 twin, the memory estimate per format, and the
//! streamed random safetensors writer (what `lion bench --preset lion-4b` loads).

use candle_core::{DType, Device, Module, Tensor, Var};
use lion_core::adapter::Route;
use lion_core::cpu::{Quantize, WeightDtype};
use lion_core::linear::{
    get_quantizable_weight, load_linear, with_quantize, with_weight_dtype, Linear, Quantizable,
};
use lion_core::quant::QWeight;
use lion_core::t5::{T5ForConditionalGeneration, T5Input};
use lion_core::testing::max_abs_diff;
use lion_core::weights::{record_keys, write_random_safetensors, Checkpoint, WeightLoader};

/// `rows * cols` values drawn from N(0, std^2), row-major.
fn randn_vec(std: f32, rows: usize, cols: usize) -> Vec<f32> {
    // seeded by the shape and scale (Box-Muller over xorshift), so a failure reproduces
    let mut s = 0x9e37_79b9_7f4a_7c15u64
        ^ ((rows as u64) << 32 | cols as u64)
        ^ (std.to_bits() as u64) << 11;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..rows * cols)
        .map(|_| {
            let (a, b) = (uniform(), uniform());
            (std as f64 * (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        })
        .collect()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let scale = lion_core::testing::max_abs(b).unwrap();
    max_abs_diff(a, b).unwrap() / scale
}

#[test]
fn formats_take_widths_in_blocks_of_32() {
    for q in Quantize::ALL {
        assert!(q.fits(1408) && q.fits(64), "{q:?}");
        assert!(!q.fits(48) && !q.fits(0), "{q:?}");
        assert_eq!(Quantize::parse(q.name()), Some(q));
    }
    assert_eq!(Quantize::parse("q4k"), Some(Quantize::Q4K));
    assert_eq!(Quantize::parse("q4_k"), None);
}

/// Every dequantized weight is within half a step of the original (q8_0: step max|w|/127 per
/// block), or one step for q4_0 (step |w_max|/8: its 16 levels reach -8 steps on the extreme's
/// side and only +7 on the other, as GGML's), and exact at the block's extreme value; a zero
/// block stays zero.
#[test]
fn quantization_error_is_at_most_half_a_step() {
    let (n, k) = (7, 96);
    let mut w = randn_vec(1., n, k);
    w[..32].iter_mut().for_each(|v| *v = 0.0);
    for (q, levels, slack) in [(Quantize::Q8_0, 127.0f32, 0.5), (Quantize::Q4_0, 8.0, 1.0)] {
        let qw = QWeight::quantize(&w, n, k, q);
        let back = qw.dequantize();
        for (b, (x, y)) in w.chunks(32).zip(back.chunks(32)).enumerate() {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let step = amax / levels;
            for (a, c) in x.iter().zip(y) {
                assert!(
                    (a - c).abs() <= step * slack + 1e-6,
                    "{q:?} block {b}: {a} -> {c}"
                );
            }
            let i = x.iter().position(|v| v.abs() == amax).unwrap();
            assert!(
                (x[i] - y[i]).abs() <= 1e-6 * amax.max(1.0),
                "{q:?} block {b} extreme"
            );
        }
        assert!(back[..32].iter().all(|&v| v == 0.0));
        let bytes = qw.size_in_bytes() as f64 / (n * k) as f64;
        assert!(
            (bytes - q.bytes_per_weight()).abs() < 1e-9,
            "{q:?}: {bytes} bytes per weight"
        );
    }
}

/// q4k: each block's squared error is at most that of the plain asymmetric scheme (16 levels
/// from the block's minimum to its maximum, the search's first candidate, computed here on its
/// own), every weight within 1.5 of its steps (the fit minimises the sum, not the largest
/// error: in a NumPy model of the same search, over 200,000 Gaussian blocks the worst weight
/// was 1.09 steps off and 10 blocks went past
/// 1.0, so a bound of one step fails a run now and then); a constant block (zero or not) is exact; over
/// many Gaussian blocks the RMS error is well below q4_0's (about 20% lower).
#[test]
fn q4k_blocks_fit_better_than_their_range() {
    let (n, k) = (64, 256);
    let mut w = randn_vec(1., n, k);
    w[..32].iter_mut().for_each(|v| *v = 0.0);
    w[32..64].iter_mut().for_each(|v| *v = -0.75);
    let back = QWeight::quantize(&w, n, k, Quantize::Q4K).dequantize();
    assert!(back[..32].iter().all(|&v| v == 0.0));
    assert!(back[32..64].iter().all(|&v| v == -0.75));
    for (b, (x, y)) in w.chunks(32).zip(back.chunks(32)).enumerate().skip(2) {
        let (lo, hi) = x
            .iter()
            .fold((f32::MAX, f32::MIN), |(a, c), &v| (a.min(v), c.max(v)));
        let step = (hi - lo) / 15.0;
        let plain: f64 = x
            .iter()
            .map(|&v| {
                let e = (((v - lo) / step).round() * step + lo - v) as f64;
                e * e
            })
            .sum();
        let err: f64 = x.iter().zip(y).map(|(a, c)| ((a - c) as f64).powi(2)).sum();
        assert!(err <= plain * (1.0 + 1e-5), "block {b}: {err} > {plain}");
        for (a, c) in x.iter().zip(y) {
            assert!(
                (a - c).abs() <= 1.5 * step,
                "block {b}: {a} -> {c}, step {step}"
            );
        }
    }
    let rms = |q: Quantize| {
        let back = QWeight::quantize(&w, n, k, q).dequantize();
        let e: f64 = w
            .iter()
            .zip(&back)
            .map(|(a, c)| ((a - c) as f64).powi(2))
            .sum();
        (e / w.len() as f64).sqrt()
    };
    let (q4k, q4_0) = (rms(Quantize::Q4K), rms(Quantize::Q4_0));
    eprintln!("RMS error: q4k {q4k:.4}, q4_0 {q4_0:.4}");
    assert!(q4k < 0.9 * q4_0, "q4k {q4k} vs q4_0 {q4_0}");
}

/// The kernels (skinny rows 1..=16, in register groups of up to 6 rows, and the
/// dequantize-to-bf16/f32 GEMM above, in the bf16 kernel's dot-product tiles and, from 48 rows,
/// its outer-product layout) against the dequantized weight times x in f64, for widths that are
/// not multiples of the kernels' tiles.
#[test]
fn quantized_kernels_match_the_dequantized_product() {
    for (n, k) in [(5, 32), (77, 1408), (33, 96), (300, 64)] {
        let w = randn_vec(0.05, n, k);
        for q in Quantize::ALL {
            let qw = QWeight::quantize(&w, n, k, q);
            let d = qw.dequantize();
            for m in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 16, 17, 40, 49, 70] {
                let x = randn_vec(1., m, k);
                let y = qw.matmul_wt(&x, m);
                assert_eq!(y.len(), m * n);
                let mut worst = 0f64;
                let mut scale = 0f64;
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|t| x[r * k + t] as f64 * d[j * k + t] as f64)
                            .sum();
                        worst = worst.max((want - y[r * n + j] as f64).abs());
                        scale = scale.max(want.abs());
                    }
                }
                // skinny rows and the f32 GEMM on f32-dequantized rows: f32 sums (1e-5); the
                // vdpbf16ps path: x and the weight rounded to bf16 (~0.4%)
                let tol = if m <= lion_core::skinny::MAX_ROWS || !lion_core::bf16::rounds_x(m) {
                    1e-5
                } else {
                    1e-2
                };
                assert!(
                    worst <= tol * scale.max(1.0),
                    "{q:?} ({n}, {k}) m {m}: {worst} of {scale}"
                );
            }
        }
    }
}

/// A quantized layer is close to the dense one (relative to the output scale), for 1 to 40
/// rows and rank-3 inputs, with its bias; trainable weights, weights outside the scope and
/// widths the format cannot take stay dense; the input gradient flows through the dequantized
/// weight.
#[test]
fn quantized_linear_is_close_to_dense_and_passes_input_gradients() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 0.05, (96, 512), &dev)?;
    let b = Tensor::randn(0f32, 0.1, 96, &dev)?;
    let dense = Linear::new(w.clone(), Some(b.clone()));
    for (q, tol) in [
        (Quantize::Q8_0, 0.02),
        (Quantize::Q4_0, 0.15),
        (Quantize::Q4K, 0.15),
    ] {
        let layer = with_quantize(Some(q), || {
            load_linear(w.clone(), Some(b.clone()), Quantizable::Yes)
        })?;
        assert!(layer.is_quantized() && layer.weight().is_none(), "{q:?}");
        for shape in [vec![1, 512], vec![5, 512], vec![40, 512], vec![2, 7, 512]] {
            let x = Tensor::randn(0f32, 1., shape.clone(), &dev)?;
            let y = layer.forward(&x)?;
            assert_eq!(y.dims()[..shape.len() - 1], shape[..shape.len() - 1]);
            let e = rel_err(&y, &dense.forward(&x)?);
            assert!(e < tol, "{q:?} {shape:?}: relative error {e}");
        }
        // autograd through the input
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 512), &dev)?)?;
        let g = layer.forward(x.as_tensor())?.sum_all()?.backward()?;
        let gx = g.get(x.as_tensor()).expect("input gradient");
        let want = w.sum(0)?.broadcast_as((3, 512))?;
        let e = rel_err(gx, &want);
        assert!(e < tol * 4.0, "{q:?} input gradient: {e}");
    }
    let q = Some(Quantize::Q8_0);
    let trainable = Var::from_tensor(&w)?;
    let kept = with_quantize(q, || {
        load_linear(trainable.as_tensor().clone(), None, Quantizable::Yes)
    })?;
    assert!(
        !kept.is_quantized(),
        "a trainable weight is never quantized"
    );
    assert!(!with_quantize(q, || load_linear(w.clone(), None, Quantizable::No))?.is_quantized());
    assert!(
        !load_linear(w.clone(), None, Quantizable::Yes)?.is_quantized(),
        "outside the scope"
    );
    let narrow = Tensor::randn(0f32, 0.05, (8, 48), &dev)?;
    assert!(!with_quantize(q, || load_linear(narrow, None, Quantizable::Yes))?.is_quantized());
    Ok(())
}

/// Quantizing at load under `--dtype bf16` starts from the file's f32 values (as `lion convert
/// --quantize` does), not from their bf16 rounding: the layer equals the one quantized from f32,
/// and differs from the one quantized from bf16. A layer the format cannot take is rounded to
/// bf16 and stays dense.
#[test]
fn quantizing_under_bf16_starts_from_the_stored_f32_values() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let loader = WeightLoader::random().with_init_seed(5);
    let vb = loader.var_builder(DType::F32, &dev);
    let init = candle_nn::Init::Randn {
        mean: 0.,
        stdev: 0.05,
    };
    let load = |name: &str, k: usize| {
        with_weight_dtype(WeightDtype::Bf16, || {
            with_quantize(Some(Quantize::Q8_0), || {
                let w = get_quantizable_weight(&vb, (64, k), name, init)?;
                Ok::<_, candle_core::Error>((w.clone(), load_linear(w, None, Quantizable::Yes)?))
            })
        })
    };
    let (w, layer) = load("wide", 256)?;
    assert_eq!(w.dtype(), DType::F32, "read as stored, not rounded first");
    assert!(layer.is_quantized());
    let values = w.flatten_all()?.to_vec1::<f32>()?;
    let from = |v: &[f32]| Linear::quantized(QWeight::quantize(v, 64, 256, Quantize::Q8_0), None);
    let rounded = w
        .to_dtype(DType::BF16)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let x = Tensor::randn(0f32, 1., (3, 256), &dev)?;
    let y = layer.forward(&x)?;
    assert_eq!(max_abs_diff(&y, &from(&values).forward(&x)?)?, 0.0);
    assert!(
        max_abs_diff(&y, &from(&rounded).forward(&x)?)? > 0.0,
        "quantizing the bf16 rounding gives other blocks"
    );
    let (_, narrow) = load("narrow", 48)?;
    assert!(!narrow.is_quantized());
    assert_eq!(narrow.weight().map(|w| w.dtype()), Some(DType::BF16));
    Ok(())
}

fn t5_cfg() -> lion_core::t5::T5Config {
    lion_core::presets::flan_t5(256, 256, 512, 2, 4, 64)
}

fn build_t5(q: Option<Quantize>) -> lion_core::Result<T5ForConditionalGeneration> {
    let loader = WeightLoader::random().with_init_seed(11);
    let vb = loader.var_builder(DType::F32, &Device::Cpu);
    Ok(with_quantize(q, || {
        T5ForConditionalGeneration::new(&t5_cfg(), vb)
    })?)
}

/// A T5 whose blocks are quantized stays close to its f32 twin (the same seeded weights): the
/// decoder logits over 8 inputs, relative to their scale. The LM head stays dense.
#[test]
fn quantized_t5_logits_stay_close_to_f32() -> lion_core::Result<()> {
    let dev = Device::Cpu;
    let f32_model = build_t5(None)?;
    let x = Tensor::randn(0f32, 1., (8, 12, 256), &dev)?;
    let ids = Tensor::zeros((8, 3), DType::U32, &dev)?;
    let logits = |m: &T5ForConditionalGeneration| -> lion_core::Result<Tensor> {
        let states = m.encode(T5Input::Embeds(&x), None, Route::ImageLevel, false)?;
        Ok(m.decode(&ids, &states, None, Route::ImageLevel, false)?)
    };
    let want = logits(&f32_model)?;
    for (q, tol) in [
        (Quantize::Q8_0, 0.05),
        (Quantize::Q4_0, 0.3),
        (Quantize::Q4K, 0.3),
    ] {
        let m = build_t5(Some(q))?;
        assert!(m.lm_head().is_some(), "the LM head stays dense");
        let e = rel_err(&logits(&m)?, &want);
        eprintln!("{q:?}: max relative logit error {e:.4}");
        assert!(e < tol, "{q:?}: max relative logit error {e}");
    }
    Ok(())
}

/// The inference memory estimate follows the stored format: bf16 about half of f32, q8_0 and
/// q4k and q4_0 less again.
#[test]
fn memory_estimate_follows_dtype_and_quantisation() -> lion_core::Result<()> {
    let cfg = lion_core::presets::preset("lion-4b", None)?;
    let est = |d: WeightDtype, q: Option<Quantize>| {
        with_weight_dtype(d, || {
            with_quantize(q, || cfg.memory_estimate(1, false).unwrap())
        }) as f64
            / 1e9
    };
    let f32_gb = est(WeightDtype::F32, None);
    let bf16 = est(WeightDtype::Bf16, None);
    let q8 = est(WeightDtype::Bf16, Some(Quantize::Q8_0));
    let q4 = est(WeightDtype::Bf16, Some(Quantize::Q4_0));
    let q4k = est(WeightDtype::Bf16, Some(Quantize::Q4K));
    assert!(f32_gb > 14.0 && f32_gb < 20.0, "f32 {f32_gb}");
    assert!(
        (bf16 / f32_gb - 0.5).abs() < 0.05,
        "bf16 {bf16} vs f32 {f32_gb}"
    );
    assert!(
        q8 < 0.6 * bf16 && q4 < q4k && q4k < q8,
        "q8_0 {q8}, q4k {q4k}, q4_0 {q4}, bf16 {bf16}"
    );
    // training is always estimated in f32
    let train = with_quantize(Some(Quantize::Q4_0), || {
        cfg.memory_estimate(1, true).unwrap()
    });
    assert!(train as f64 / 1e9 > f32_gb);
    Ok(())
}

/// Streamed random weights: every key the model asks for, in the stored dtype, seeded (the same
/// bytes twice, other bytes from another seed), loadable by a strict loader, with the
/// initialisation's spread; `Const(0)` tensors get small noise.
#[test]
fn streamed_random_weights_load_strictly_and_repeat_by_seed() -> lion_core::Result<()> {
    let cfg = t5_cfg();
    let keys = record_keys(|vb| T5ForConditionalGeneration::new(&cfg, vb).map(|_| ()))?;
    assert!(keys.iter().any(|k| k.key == "shared.weight"));
    assert!(keys.iter().any(|k| k.key == "lm_head.weight"));
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, dtype: DType, seed: u64| -> lion_core::Result<std::path::PathBuf> {
        let p = dir.path().join(name);
        let mut calls = 0;
        write_random_safetensors(&p, &keys, dtype, seed, |i, n| {
            calls += 1;
            assert!(i <= n);
        })?;
        assert_eq!(calls, keys.len());
        Ok(p)
    };
    let a = write("a.safetensors", DType::BF16, 1)?;
    let b = write("b.safetensors", DType::BF16, 1)?;
    let c = write("c.safetensors", DType::BF16, 2)?;
    let f = write("f.safetensors", DType::F32, 1)?;
    let bytes = |p: &std::path::Path| std::fs::read(p).unwrap();
    assert_eq!(bytes(&a), bytes(&b));
    assert_ne!(bytes(&a), bytes(&c));
    // bf16 is f32 rounded: the same draws
    let ck = Checkpoint::open(&a)?;
    let cf = Checkpoint::open(&f)?;
    let dev = Device::Cpu;
    for k in &keys {
        let t = ck.get(&k.key, &dev)?;
        assert_eq!(t.dtype(), DType::BF16, "{}", k.key);
        assert_eq!(t.shape(), &k.shape, "{}", k.key);
        let d = max_abs_diff(&t.to_dtype(DType::F32)?, &cf.get(&k.key, &dev)?)?;
        assert!(d < 0.05, "{}: {d}", k.key);
    }
    // HF T5 init: shared ~ N(0, 1); a zero-init bias-like tensor would get N(0, 0.02)
    let shared = cf.get("shared.weight", &dev)?;
    let std = shared.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?;
    assert!((std - 1.0).abs() < 0.02, "shared std {std}");
    // a strict load of the whole model
    let loader = WeightLoader::new(vec![Checkpoint::open(&a)?]);
    let _m = with_weight_dtype(WeightDtype::Bf16, || {
        T5ForConditionalGeneration::new(&cfg, loader.var_builder(DType::F32, &dev))
    })?;
    loader.finish(lion_core::weights::LoadMode::Strict)?;
    Ok(())
}

/// A `.pth` (the transformers T5 fixture) rewritten as safetensors: every tensor equal as
/// stored, or rounded once to bf16; the dtype of each written tensor is the one asked for.
#[test]
fn pth_converts_to_streamed_safetensors() -> lion_core::Result<()> {
    use lion_core::weights::convert_to_safetensors;
    let pth = Checkpoint::open(lion_core::testing::fixture("t5/model.pth"))?;
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    for dtype in [None, Some(DType::BF16)] {
        let out = dir.path().join(format!("{dtype:?}.safetensors"));
        let n = convert_to_safetensors(std::slice::from_ref(&pth), &out, dtype, None, |_, _| {})?;
        assert_eq!(n, pth.len());
        let st = Checkpoint::open(&out)?;
        assert_eq!(
            st.keys().collect::<Vec<_>>(),
            pth.keys().collect::<Vec<_>>()
        );
        for k in pth.keys() {
            let a = pth.get(k, &dev)?;
            let b = st.get(k, &dev)?;
            match dtype {
                None => {
                    assert_eq!(b.dtype(), a.dtype(), "{k}");
                    assert_eq!(
                        max_abs_diff(&a.to_dtype(DType::F32)?, &b.to_dtype(DType::F32)?)?,
                        0.0,
                        "{k}"
                    );
                }
                Some(d) => {
                    assert_eq!(b.dtype(), d, "{k}");
                    let want = a.to_dtype(d)?.to_dtype(DType::F32)?;
                    assert_eq!(max_abs_diff(&want, &b.to_dtype(DType::F32)?)?, 0.0, "{k}");
                }
            }
        }
    }
    // a failed write leaves nothing behind
    let bad = dir.path().join("no-such-dir/x.safetensors");
    assert!(convert_to_safetensors(&[pth], &bad, None, None, |_, _| {}).is_err());
    assert!(!bad.exists());
    Ok(())
}

/// Timing of the quantized kernels beside the bf16 ones at a T5-XL FFN shape (not a test of
/// speed: `cargo test --release -p lion-core --test formats -- --ignored --nocapture`).
#[test]
#[ignore]
fn quantized_kernel_timings() {
    let (n, k) = (5120, 2048);
    let w = Tensor::randn(0f32, 0.05, (n, k), &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let wb = lion_core::bf16::to_bf16(&w);
    for m in [5, 349] {
        let x = vec![0.5f32; m * k];
        let time = |f: &dyn Fn()| {
            f();
            let t = std::time::Instant::now();
            for _ in 0..5 {
                f();
            }
            t.elapsed().as_secs_f64() / 5.0 * 1e3
        };
        let b = time(&|| drop(lion_core::bf16::matmul_wt(&x, m, k, &wb, n)));
        eprint!("m {m}: bf16 {b:.2} ms");
        for q in Quantize::ALL {
            let qw = QWeight::quantize(&w, n, k, q);
            let t = time(&|| drop(qw.matmul_wt(&x, m)));
            eprint!(", {} {t:.2} ms", q.name());
        }
        eprintln!();
    }
}

/// An f32 model over a bf16 checkpoint keeps the frozen linear weights as stored (bf16, half
/// the memory) and gives bit for bit the logits of the same model loaded from an f32 copy of
/// the checkpoint, through the GEMM (many rows) and the skinny kernels (a few decoding rows).
#[test]
fn an_f32_model_keeps_bf16_linear_weights_and_their_exact_results() -> lion_core::Result<()> {
    let cfg = t5_cfg();
    let keys = record_keys(|vb| T5ForConditionalGeneration::new(&cfg, vb).map(|_| ()))?;
    let dir = tempfile::tempdir().unwrap();
    let bf = dir.path().join("bf16.safetensors");
    write_random_safetensors(&bf, &keys, DType::BF16, 3, |_, _| {})?;
    let dev = Device::Cpu;
    let widened: std::collections::HashMap<String, Tensor> = Checkpoint::open(&bf)?
        .load_all(&dev)?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()?;
    let f = dir.path().join("f32.safetensors");
    candle_core::safetensors::save(&widened, &f)?;
    let load = |p: &std::path::Path| -> lion_core::Result<T5ForConditionalGeneration> {
        let loader = WeightLoader::new(vec![Checkpoint::open(p)?]);
        let m = T5ForConditionalGeneration::new(&cfg, loader.var_builder(DType::F32, &dev))?;
        loader.finish(lion_core::weights::LoadMode::Strict)?;
        Ok(m)
    };
    let (kept, plain) = (load(&bf)?, load(&f)?);
    assert_eq!(kept.lm_head().map(|w| w.dtype()), Some(DType::BF16));
    assert_eq!(plain.lm_head().map(|w| w.dtype()), Some(DType::F32));
    assert_eq!(
        kept.shared().dtype(),
        DType::BF16,
        "the token table as stored"
    );
    for (rows, len) in [(8, 3), (2, 1)] {
        let x = Tensor::randn(0f32, 1., (rows, 12, 256), &dev)?;
        let ids = Tensor::zeros((rows, len), DType::U32, &dev)?;
        let logits = |m: &T5ForConditionalGeneration| -> lion_core::Result<Tensor> {
            let states = m.encode(T5Input::Embeds(&x), None, Route::ImageLevel, false)?;
            Ok(m.decode(&ids, &states, None, Route::ImageLevel, false)?)
        };
        let (a, b) = (logits(&kept)?, logits(&plain)?);
        assert_eq!(a.dtype(), DType::F32);
        assert_eq!(max_abs_diff(&a, &b)?, 0.0, "{rows} x {len} decoder rows");
    }
    Ok(())
}
