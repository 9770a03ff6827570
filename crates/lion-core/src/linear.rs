//! A linear layer whose backward pass skips the weight gradient when the weight is frozen.
//!
//! candle's matmul backward always computes both operand gradients: in PEFT training (adapters
//! trainable, backbone frozen) every backbone linear would spend a full extra GEMM, and a
//! weight-sized buffer, on a gradient nobody reads. [`Linear`] runs `x @ W^T` as a candle
//! [`CustomOp2`] (f32 on the CPU: [`crate::sgemm::matmul_wt`], i.e. [`crate::skinny`] for up to
//! 16 rows as in decoding, else the AVX-512 GEMM or candle's; the backward's products likewise
//! through [`crate::sgemm::matmul_tensors`]) whose `bwd` returns the input gradient, and the weight gradient only when the weight takes
//! part in autograd (`track_op`). Other devices (and the plain path,
//! [`crate::kernels::fused`]) use `candle_nn::Linear`. Tested against `candle_nn::Linear`, forward and backward (tests/linear.rs).
//!
//! bf16 weights (`--dtype bf16`): a model built inside [`with_weight_dtype`]`(Bf16, ..)` gets the
//! frozen weights of its big linear layers (those built through [`load_weight`]: T5, BERT /
//! Q-Former, EVA ViT) converted to bf16 once; activations stay f32, and `x @ W^T` runs
//! [`crate::bf16::matmul_wt`] (f32 accumulation). Trainable weights (`Var`s) stay f32. An f32
//! model keeps a frozen weight its checkpoint stores in bf16 as bf16 ([`get_weight`]) and
//! multiplies it as the widened f32 weight, bit for bit ([`crate::bf16::matmul_wt_widened`]).
//!
//! Quantized weights (`--quantize q8_0|q4_0|q4k`): inside [`with_quantize`], [`load_linear`] with
//! `quantizable` (the ViT's and T5's blocks; never the LM head) stores a frozen CPU weight as a
//! [`QWeight`] and multiplies with its kernels. A quantized layer can still take part in autograd
//! through its input (the weight is dequantized for that product).

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor};

use crate::cpu::{Quantize, WeightDtype};
use crate::quant::QWeight;
use crate::skinny;

thread_local! {
    static WEIGHT_DTYPE: Cell<WeightDtype> = const { Cell::new(WeightDtype::F32) };
    static QUANTIZE: Cell<Option<Quantize>> = const { Cell::new(None) };
    static QUANTIZABLE: RefCell<Option<Vec<QuantizableKey>>> = const { RefCell::new(None) };
    static KEEP_BF16: Cell<bool> = const { Cell::new(false) };
}

/// Whether the weight being read now ([`get_weight`] in an f32 model) may keep a bf16
/// checkpoint tensor as it is stored: the weight loader ([`crate::weights::WeightLoader`])
/// asks, and hands such a tensor out in bf16 instead of widening it to f32 (CPU only).
pub fn keeps_stored_bf16() -> bool {
    KEEP_BF16.with(|k| k.get())
}

/// How `--quantize` treats a linear layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantizable {
    /// Never quantized (trainable layers, and everything outside the ViT's and T5's blocks).
    No,
    /// Stored in the chosen format.
    Yes,
    /// Stored in the chosen format, except that q4k keeps it at 8 bits (q8_0): the T5's
    /// attention value and feed-forward output projections (`v`, `wo`), as llama.cpp's Q4_K_M
    /// keeps `attn_v` and `ffn_down` at higher precision. On the shapes backbone these 10 of 36
    /// T5 weights take q4k's caption CIDEr from 4.5 points below f32 to within 0.5 (README,
    /// "Reduced formats").
    Sensitive,
}

impl Quantizable {
    /// The format this layer is stored in when the model is quantized to `q`.
    pub fn format(self, q: Quantize) -> Option<Quantize> {
        match (self, q) {
            (Self::No, _) => None,
            (Self::Sensitive, Quantize::Q4K) => Some(Quantize::Q8_0),
            _ => Some(q),
        }
    }
}

/// A quantizable layer's weight key (the checkpoint's), its (out, in) size and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantizableKey {
    pub key: String,
    pub n: usize,
    pub k: usize,
    pub role: Quantizable,
}

/// Runs `f` (a model's construction) and returns, beside its result, the weights it built as
/// quantizable layers ([`stored_quantized`] is asked for each): what `lion convert --quantize`
/// stores quantized.
pub fn record_quantizable<T>(f: impl FnOnce() -> T) -> (T, Vec<QuantizableKey>) {
    struct Restore(Option<Vec<QuantizableKey>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUANTIZABLE.with(|r| *r.borrow_mut() = self.0.take());
        }
    }
    let restore = Restore(QUANTIZABLE.with(|r| r.borrow_mut().replace(vec![])));
    let out = f();
    let keys = QUANTIZABLE
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    drop(restore);
    (out, keys)
}

/// The names under which a quantized model folder stores weight `name` in format `q`:
/// `{name}.{q}.qs` (u8, (n, [`Quantize::row_bytes`])) and `{name}.{q}.scales` (f32, (n, k / 32)).
pub fn quantized_names(name: &str, q: Quantize) -> (String, String) {
    (
        format!("{name}.{}.qs", q.name()),
        format!("{name}.{}.scales", q.name()),
    )
}

/// The (n, k) weight `name` of a quantizable layer as a quantized model folder stores it
/// ([`quantized_names`], written by `lion convert --quantize`), when `vb`'s checkpoint holds
/// it: read as stored, not quantized again. None when it holds the dense weight (or nothing).
/// `role` is recorded for [`record_quantizable`].
pub fn stored_quantized(
    vb: &candle_nn::VarBuilder,
    n: usize,
    k: usize,
    name: &str,
    role: Quantizable,
) -> Result<Option<QWeight>> {
    QUANTIZABLE.with(|r| {
        if let Some(keys) = r.borrow_mut().as_mut() {
            let prefix = vb.prefix();
            let key = match prefix.is_empty() {
                true => name.to_string(),
                false => format!("{prefix}.{name}"),
            };
            keys.push(QuantizableKey { key, n, k, role });
        }
    });
    for q in Quantize::ALL {
        let (qs_name, scales_name) = quantized_names(name, q);
        if !vb.contains_tensor(&qs_name) {
            continue;
        }
        let at = |what: &str| format!("{}.{what}", vb.prefix());
        if !vb.device().is_cpu() {
            candle_core::bail!(
                "{}: quantized weights run on the CPU only (convert the folder without --quantize \
                 for a GPU)",
                at(&qs_name)
            )
        }
        if !q.fits(k) {
            candle_core::bail!(
                "{}: width {k} cannot be stored as {}",
                at(&qs_name),
                q.name()
            )
        }
        let zero = candle_nn::Init::Const(0.);
        let qs = vb.get_with_hints_dtype((n, q.row_bytes(k)), &qs_name, zero, DType::U8)?;
        let scales = vb.get_with_hints_dtype((n, k / 32), &scales_name, zero, DType::F32)?;
        let w = QWeight::from_parts(
            q,
            n,
            k,
            scales.flatten_all()?.to_vec1::<f32>()?,
            qs.flatten_all()?.to_vec1::<u8>()?,
        )
        .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", at(&qs_name))))?;
        return Ok(Some(w));
    }
    Ok(None)
}

/// Runs `f` (a model's construction) with [`load_linear`] quantizing the quantizable frozen
/// linear weights to `q` (None: dense); the previous setting comes back afterwards.
pub fn with_quantize<T>(q: Option<Quantize>, f: impl FnOnce() -> T) -> T {
    struct Restore(Option<Quantize>);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUANTIZE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(QUANTIZE.with(|d| d.replace(q)));
    f()
}

/// Bytes per weight of the big linear layers as the current settings store them (memory
/// estimates): the quantized format's, else [`dense_bytes_per_weight`].
pub fn bytes_per_weight() -> f64 {
    match QUANTIZE.with(|d| d.get()) {
        Some(q) => q.mean_bytes_per_weight(),
        None => dense_bytes_per_weight(),
    }
}

/// Bytes per weight of what is never quantized (embeddings, the LM head): bf16's 2 or f32's 4.
pub fn dense_bytes_per_weight() -> f64 {
    match WEIGHT_DTYPE.with(|d| d.get()) {
        WeightDtype::Bf16 => 2.0,
        WeightDtype::F32 => 4.0,
    }
}

/// A linear layer from its loaded weight (out, in) and bias: quantized inside
/// [`with_quantize`] (in the format `role` gives it) when the weight is a frozen CPU tensor
/// whose width the format takes (a multiple of 32), else dense as [`load_weight`] stores it.
pub fn load_linear(w: Tensor, bias: Option<Tensor>, role: Quantizable) -> Result<Linear> {
    if let Some(q) = QUANTIZE.with(|d| d.get()).and_then(|q| role.format(q)) {
        let (n, k) = w.dims2()?;
        if !w.is_variable() && w.device().is_cpu() && q.fits(k) {
            let values = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            drop(w);
            return Ok(Linear {
                weight: Weight::Quantized(Arc::new(QWeight::quantize(&values, n, k, q))),
                bias,
                widened: false,
            });
        }
    }
    Ok(Linear::new(load_weight(w)?, bias))
}

impl Linear {
    /// A layer whose weight is already quantized ([`stored_quantized`]).
    pub fn quantized(weight: QWeight, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Quantized(Arc::new(weight)),
            bias,
            widened: false,
        }
    }
}

/// Runs `f` (a model's construction) with [`load_weight`] storing frozen linear weights in
/// `dtype`; the previous setting comes back afterwards, also when `f` panics.
pub fn with_weight_dtype<T>(dtype: WeightDtype, f: impl FnOnce() -> T) -> T {
    struct Restore(WeightDtype);
    impl Drop for Restore {
        fn drop(&mut self) {
            WEIGHT_DTYPE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(WEIGHT_DTYPE.with(|d| d.replace(dtype)));
    f()
}

/// The dtype [`with_weight_dtype`] is building frozen linear weights in now (f32 outside it):
/// a layer built in bf16 may run its other products in bf16 too (attention,
/// [`crate::kernels::attention_in`]), so it reads this once, at construction.
pub fn weight_dtype() -> WeightDtype {
    WEIGHT_DTYPE.with(|d| d.get())
}

/// A frozen linear layer's weight read from `vb` in the dtype it will be kept in: bf16 inside
/// `with_weight_dtype(Bf16, ..)` (a bf16 file is then read as stored, with no f32 copy on the
/// way; an f32 file is rounded once), else `vb`'s dtype, except that an f32 model on the CPU
/// keeps a weight its checkpoint stores in bf16 as it is (exactly the f32 values, in half the
/// memory; [`Linear::new`] multiplies it as f32, bit for bit the widened weight's result).
/// Then [`load_weight`].
pub fn get_weight(
    vb: &candle_nn::VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    init: candle_nn::Init,
) -> Result<Tensor> {
    let w = match WEIGHT_DTYPE.with(|d| d.get()) {
        WeightDtype::Bf16 => vb.get_with_hints_dtype(shape, name, init, DType::BF16)?,
        WeightDtype::F32 => get_as_stored(vb, shape, name, init)?,
    };
    load_weight(w)
}

/// A frozen tensor read from an f32 `vb`: kept in bf16 when its checkpoint stores it so on the
/// CPU (exactly its f32 values, in half the memory), else in `vb`'s dtype. Linear weights of an
/// f32 model ([`get_weight`]) and lookup tables ([`crate::embedding::Embedding::load`], also
/// under `--dtype bf16`) are read so.
pub fn get_as_stored(
    vb: &candle_nn::VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    init: candle_nn::Init,
) -> Result<Tensor> {
    if vb.dtype() != DType::F32 {
        return vb.get_with_hints_dtype(shape, name, init, vb.dtype());
    }
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            KEEP_BF16.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(KEEP_BF16.with(|k| k.replace(true)));
    vb.get_with_hints_dtype(shape, name, init, DType::F32)
}

/// Whether a bf16 tensor built now (a model's construction) holds f32 values stored compactly
/// (an f32 model over a bf16 checkpoint) rather than bf16 compute (`--dtype bf16`).
fn bf16_is_widened(t: &Tensor) -> bool {
    t.dtype() == DType::BF16 && WEIGHT_DTYPE.with(|d| d.get()) == WeightDtype::F32
}

/// The frozen weight of a quantizable layer, for [`load_linear`]`(w, bias, true)`: as
/// [`get_weight`], except inside [`with_quantize`], where it is read in `vb`'s dtype whatever the
/// weight dtype, so that the layer is quantized from the file's own values (as `lion convert
/// --quantize` does) and not from a bf16 rounding of them; [`load_linear`] rounds it if it stays
/// dense.
pub fn get_quantizable_weight(
    vb: &candle_nn::VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    init: candle_nn::Init,
) -> Result<Tensor> {
    match QUANTIZE.with(|d| d.get()) {
        Some(_) => vb.get_with_hints_dtype(shape, name, init, vb.dtype()),
        None => get_weight(vb, shape, name, init),
    }
}

/// A linear layer's weight as loaded: converted to bf16 inside `with_weight_dtype(Bf16, ..)`
/// when it is a frozen f32 tensor (on the CPU or a GPU), else unchanged.
pub fn load_weight(w: Tensor) -> Result<Tensor> {
    let bf16 = WEIGHT_DTYPE.with(|d| d.get()) == WeightDtype::Bf16;
    let w = if bf16 && w.dtype() == DType::F32 && !w.is_variable() {
        w.to_dtype(DType::BF16)?
    } else {
        w
    };
    // a frozen bf16 weight (converted here, or stored so): subnormals to 0, once, so packing
    // need not check them
    if w.dtype() == DType::BF16 && !w.is_variable() {
        crate::bf16::flush_subnormals(w)
    } else {
        Ok(w)
    }
}

/// `x @ W^T`; `widened`: a bf16 `W` stands for f32 values ([`Linear::new`]).
struct MatmulWt {
    widened: bool,
}

impl CustomOp2 for MatmulWt {
    fn name(&self) -> &'static str {
        "lion-linear"
    }

    /// x (..., k) contiguous, w (n, k) -> (..., n)
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.dims();
        let k = *dims.last().expect("rank checked by the caller");
        let (n, k2) = match l2.dims() {
            [n, k2] => (*n, *k2),
            d => candle_core::bail!("lion-linear: weight must be 2-d, got {d:?}"),
        };
        if k != k2 {
            candle_core::bail!("lion-linear: input width {k} != weight width {k2}")
        }
        if !l1.is_contiguous() {
            candle_core::bail!("lion-linear: input must be contiguous")
        }
        let m = l1.shape().elem_count() / k.max(1);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty") = n;
        if let (CpuStorage::F32(xs), CpuStorage::F32(ws), Some((w0, w1))) =
            (s1, s2, l2.contiguous_offsets())
        {
            // skinny rows or the AVX-512 GEMM; the gemm crate below reads the storage in place
            if (1..=skinny::MAX_ROWS).contains(&m) || crate::sgemm::available() {
                let x0 = l1.start_offset();
                let y = crate::sgemm::matmul_wt(&xs[x0..x0 + m * k], m, k, &ws[w0..w1], n);
                return Ok((CpuStorage::F32(y), Shape::from(shape)));
            }
        }
        if let (CpuStorage::F32(xs), CpuStorage::BF16(ws), Some((w0, w1))) =
            (s1, s2, l2.contiguous_offsets())
        {
            let x0 = l1.start_offset();
            let x = &xs[x0..x0 + m * k];
            let y = match self.widened {
                true => crate::bf16::matmul_wt_widened(x, m, k, &ws[w0..w1], n),
                false => crate::bf16::matmul_wt(x, m, k, &ws[w0..w1], n),
            };
            return Ok((CpuStorage::F32(y), Shape::from(shape)));
        }
        let lhs = Layout::contiguous_with_offset((m, k), l1.start_offset());
        let rhs = l2.transpose(0, 1)?;
        let out = s1.matmul(s2, (1, m, n, k), &lhs, &rhs)?;
        Ok((out, Shape::from(shape)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, k) = w.dims2()?;
        let m = x.elem_count() / k.max(1);
        let g = grad.reshape((m, n))?;
        // (a bf16 weight is frozen inference storage; its gradients run in the input's dtype)
        let w = &w.to_dtype(x.dtype())?;
        let gx = crate::sgemm::matmul_tensors(&g, w)?.reshape(x.shape())?;
        let gw = if w.track_op() {
            Some(crate::sgemm::matmul_tensors(&g.t()?, &x.reshape((m, k))?)?)
        } else {
            None
        };
        Ok((Some(gx), gw))
    }
}

/// `x @ W^T + b` as one autograd node, for an f32 input and bias: the product as [`MatmulWt`],
/// then `z + b` added in place (per element the same f32 sum as [`crate::kernels::add_bias`]),
/// and a backward that hands the incoming gradient straight to the product's. As two nodes the
/// intermediate `z` got a gradient entry of its own in candle's backward (a zero-filled buffer
/// of the output's size, plus a pass adding the bias node's pass-through into it), and the
/// forward a second pass over the output; a training step of the tag encoder (BERT: every
/// linear has a bias) makes 36 such outputs of up to 1504 x 1536. Bit for bit the two-node
/// composition (tests/linear.rs).
struct MatmulWtBias {
    widened: bool,
}

impl CustomOp3 for MatmulWtBias {
    fn name(&self) -> &'static str {
        "lion-linear-bias"
    }

    /// x (..., k) contiguous f32, w (n, k), b (n,) f32 -> (..., n) f32
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, shape) = MatmulWt {
            widened: self.widened,
        }
        .cpu_fwd(s1, l1, s2, l2)?;
        let n = *shape.dims().last().expect("rank checked by the caller");
        let (CpuStorage::F32(mut y), CpuStorage::F32(b), Some((b0, b1))) =
            (y, s3, l3.contiguous_offsets())
        else {
            candle_core::bail!("lion-linear-bias: f32 output and contiguous f32 bias only")
        };
        let b = &b[b0..b1];
        if b.len() != n {
            candle_core::bail!("lion-linear-bias: bias of {} for {n} outputs", b.len())
        }
        let add = |rows: &mut [f32]| {
            for r in rows.chunks_exact_mut(n) {
                r.iter_mut().zip(b).for_each(|(v, &bv)| *v += bv);
            }
        };
        if y.len() >= 1 << 16 && n > 0 {
            use rayon::prelude::*;
            let rows = (y.len() / n)
                .div_ceil(4 * rayon::current_num_threads())
                .max(1);
            y.par_chunks_mut(rows * n).for_each(add);
        } else if n > 0 {
            add(&mut y);
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw) = MatmulWt {
            widened: self.widened,
        }
        .bwd(x, w, res, grad)?;
        let gb = if b.track_op() {
            Some(crate::kernels::sum_rows(grad)?)
        } else {
            None
        };
        Ok((gx, gw, gb))
    }
}

/// A linear layer's weight: a tensor (f32 or bf16), or quantized blocks.
#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized(Arc<QWeight>),
}

/// `x @ W^T (+ b)` with weight (out, in) and optional bias (out,), as `candle_nn::Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
    /// A bf16 weight of an f32 model: f32 values stored compactly, multiplied exactly as f32.
    widened: bool,
}

impl Linear {
    /// A layer over a dense weight. A bf16 weight built in an f32 model (outside
    /// [`with_weight_dtype`]`(Bf16, ..)`) holds f32 values stored in bf16 ([`get_weight`]): it is
    /// multiplied as the widened f32 weight, bit for bit ([`crate::bf16::matmul_wt_widened`]);
    /// inside `with_weight_dtype(Bf16, ..)` it is bf16 compute ([`crate::bf16::matmul_wt`]).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let widened = bf16_is_widened(&weight);
        Self {
            weight: Weight::Dense(weight),
            bias,
            widened,
        }
    }

    /// The weight (out, in); None when it is quantized ([`load_linear`]).
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Quantized(_) => None,
        }
    }

    /// Whether the weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => crate::kernels::add_bias(&y, &b.to_dtype(y.dtype())?),
            None => Ok(y),
        }
    }

    /// A quantized weight: its kernels; with autograd on the input, the weight dequantized
    /// (frozen either way). xs: (..., k) -> (..., n) f32.
    fn forward_quantized(&self, q: &QWeight, xs: &Tensor) -> Result<Tensor> {
        let (n, k) = q.dims();
        let dims = xs.dims();
        if dims.last() != Some(&k) {
            candle_core::bail!("quantized linear: input {dims:?}, weight width {k}")
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("non-empty") = n;
        let m = xs.elem_count() / k;
        let y = if xs.track_op() {
            let w = Tensor::from_vec(q.dequantize(), (n, k), xs.device())?;
            xs.broadcast_matmul(&w.to_dtype(xs.dtype())?.t()?)?
        } else {
            let x = xs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Tensor::from_vec(q.matmul_wt(&x, m), shape, xs.device())?
        };
        self.add_bias(y)
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    /// Plain candle ops (a GPU, or the plain path forced): a bf16 weight with f32 activations
    /// multiplies in bf16 (activations rounded to bf16, as PyTorch's bf16 linear) and returns
    /// f32, the bias added in f32; otherwise (a widened weight too) the weight in the input's
    /// dtype.
    fn forward_plain(&self, weight: &Tensor, xs: &Tensor) -> Result<Tensor> {
        if weight.dtype() == DType::BF16 && xs.dtype() == DType::F32 && !self.widened {
            let y = candle_nn::Linear::new(weight.clone(), None)
                .forward(&xs.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)?;
            return match &self.bias {
                Some(b) => y.broadcast_add(&b.to_dtype(DType::F32)?),
                None => Ok(y),
            };
        }
        let w = weight.to_dtype(xs.dtype())?;
        candle_nn::Linear::new(w, self.bias.clone()).forward(xs)
    }
}

impl Module for Linear {
    /// xs: (..., in) -> (..., out)
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let weight = match &self.weight {
            Weight::Dense(w) => w,
            Weight::Quantized(q) => return self.forward_quantized(q, xs),
        };
        let cpu = crate::kernels::fused(xs.device())
            && weight.device().is_cpu()
            && (xs.dtype() == weight.dtype()
                || (xs.dtype() == DType::F32 && weight.dtype() == DType::BF16))
            && xs.rank() >= 1
            && weight.rank() == 2;
        if !cpu {
            return self.forward_plain(weight, xs);
        }
        let xs = xs.contiguous()?;
        let widened = self.widened;
        match &self.bias {
            Some(b)
                if xs.dtype() == DType::F32
                    && b.dtype() == DType::F32
                    && b.dims() == [weight.dim(0)?] =>
            {
                xs.apply_op3(weight, &b.contiguous()?, MatmulWtBias { widened })
            }
            Some(b) => crate::kernels::add_bias(&xs.apply_op2(weight, MatmulWt { widened })?, b),
            None => xs.apply_op2(weight, MatmulWt { widened }),
        }
    }
}
