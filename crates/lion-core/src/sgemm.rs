//! f32 GEMM on AVX-512 or AVX2: `C (m, n) = A (m, k) @ B (k, n)` for operands with any row and
//! column strides, packed into panels and multiplied by a 12 x 32 register-tile microkernel.
//!
//! candle's CPU matmul is the `gemm` crate, built with its AVX2 kernels (16 x 6 tiles of 256-bit
//! registers). On a CPU with two 512-bit FMA units (Intel Xeon since Skylake-SP) that is half the
//! machine; the crate's own AVX-512 build (`x86-v4`) was measured slower at the model's row
//! counts (32-349). This kernel is the textbook blocked GEMM (Goto / BLIS), sized for them:
//! - `B` is cut into panels of [`NR`] = 32 columns (two registers) over slices of [`KC`] = 256
//!   of `k`, each packed `[k][32]` (32 KiB);
//! - `A` is packed once, whole, `[k][12]` per 12-row panel (shared by the threads);
//! - a task owns up to [`GROUP`] column panels: per slice of `k` it packs their slices of `B`
//!   (in L2) and passes every row panel of `A` over them (its 12 KiB slice stays in L1);
//! - the microkernel keeps a 12 x 32 tile of `C` in 24 registers: per step of `k` two loads of
//!   `B`, twelve broadcasts of `A`, 24 FMAs.
//!
//! On AVX2 + FMA (no AVX-512) the same panels go through a 256-bit tile: the 12 x 32 tile as four
//! 6 x 16 blocks of 12 registers each. Every element is the same FMA chain either way, so the two
//! kernels give the same bits. At the model's shapes on an AMD EPYC Zen 3 (AVX2, 2 cores,
//! `examples/gemm_shapes.rs`) it ran 1.0-1.3x the `gemm` crate's speed (1.9x at the Q-Former's
//! 32 rows; 0.9-0.95x at 2048^3, not a model shape).
//!
//! Threads (rayon) take panels of `B`; each writes its own columns of `C`. Every element of `C`
//! is summed in the same order (over `k` in order within a [`KC`] slice, slices added in
//! order) whatever the thread count, so results repeat bit for bit on one machine; they differ
//! from the `gemm` crate's (another summation order) by rounding. [`crate::linear`] uses it for
//! `x @ W^T` and its backward when [`crate::cpu::Kernels::f32_gemm`] is
//! [`crate::cpu::F32Gemm::Avx512`] or [`crate::cpu::F32Gemm::Avx2`] (`LION_F32_GEMM=gemm-crate`
//! keeps the `gemm` crate; `LION_CPU=avx2` caps it at the AVX2 tile). Tested against
//! an f64 product on edge shapes (`tests/linear.rs`).

use rayon::prelude::*;

/// Rows of the register tile.
pub const MR: usize = 12;
/// Columns of the register tile (two 16-lane registers).
pub const NR: usize = 32;
/// Depth of one packed slice.
pub const KC: usize = 256;
/// Most column panels of `B` one task packs per slice (4 x 32 KiB, in L2).
pub const GROUP: usize = 4;

/// A read-only matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major (cols, rows) matrix: `W^T` for a weight `W` (n, k).
    pub fn transposed(data: &'a [f32], rows: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: rows,
        }
    }

    /// Whether every element of a (rows, cols) view lies inside `data`.
    pub(crate) fn fits(&self, rows: usize, cols: usize) -> bool {
        rows == 0 || cols == 0 || (rows - 1) * self.rs + (cols - 1) * self.cs < self.data.len()
    }

    /// Element (r, c) (bounds-checked).
    pub(crate) fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }

    /// The (rows, cols) matrix of batch item `i` of a candle layout (row-major over its
    /// leading dims; rank >= 2).
    pub(crate) fn batch_item(data: &'a [f32], l: &candle_core::Layout, i: usize) -> Self {
        let (dims, st) = (l.dims(), l.stride());
        let r = dims.len();
        let (mut at, mut rest) = (l.start_offset(), i);
        for d in (0..r - 2).rev() {
            at += rest % dims[d] * st[d];
            rest /= dims[d];
        }
        Self {
            data: &data[at..],
            rs: st[r - 2],
            cs: st[r - 1],
        }
    }
}

/// Whether this CPU runs the kernel (AVX-512 F or AVX2 + FMA, as `LION_CPU` and
/// `LION_F32_GEMM` allow).
pub fn available() -> bool {
    use crate::cpu::F32Gemm;
    matches!(
        crate::cpu::kernels().f32_gemm,
        F32Gemm::Avx512 | F32Gemm::Avx2
    )
}

/// `a` (m, k) @ `b` (k, n) -> (m, n) row-major, on the AVX-512 or AVX2 tile.
///
/// Panics when no sgemm kernel runs here (callers check [`available`]) or a view does not fit its
/// data (callers check shapes and return errors first).
pub fn matmul(m: usize, n: usize, k: usize, a: MatRef, b: MatRef) -> Vec<f32> {
    assert!(
        a.fits(m, k) && b.fits(k, n),
        "sgemm: views do not fit ({m}, {k}) x ({k}, {n})"
    );
    gemm(m, n, k, a, BSrc::F32(b))
}

/// `x (m, k) f32 @ w (n, k)^T` for a weight stored in bf16, on the AVX-512 or AVX2 tile: each value
/// of `w` is widened to f32 (exactly) as its panel is packed, so no f32 copy of the weight
/// exists and `x` is not rounded. [`crate::bf16::matmul_wt`] takes this path for many rows
/// where [`crate::cpu::Bf16Gemm::WidenF32`] is picked.
///
/// Panics when no sgemm kernel runs here ([`available`]) or a slice does not match its shape.
pub fn matmul_wt_bf16(x: &[f32], m: usize, k: usize, w: &[half::bf16], n: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "sgemm::matmul_wt_bf16: x {} for ({m}, {k}), w {} for ({n}, {k})",
        x.len(),
        w.len()
    );
    gemm(m, n, k, MatRef::row_major(x, k), BSrc::Bf16Wt(w, k))
}

/// `x (m, k) @ W^T` with the f32 weight's rows made by `fill(j0, rows, buf)` (writing rows
/// `j0..j0 + rows`, `rows * k` values, into `buf`): each task fills the rows of its own column
/// panels once, so no whole copy of the weight exists (quantized weights dequantize there).
///
/// Panics when no sgemm kernel runs here ([`available`]) or `x` does not match (m, k).
pub(crate) fn matmul_wt_filled(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    fill: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
) -> Vec<f32> {
    assert_eq!(x.len(), m * k, "sgemm::matmul_wt_filled: x for ({m}, {k})");
    gemm(m, n, k, MatRef::row_major(x, k), BSrc::Fill(fill, k))
}

/// Where `B`'s panels are packed from.
#[derive(Clone, Copy)]
enum BSrc<'a> {
    /// An f32 view.
    F32(MatRef<'a>),
    /// `W^T` for a row-major bf16 weight `W (n, k)` (the second field is `k`).
    Bf16Wt(&'a [half::bf16], usize),
    /// `W^T` for an f32 weight whose rows a function writes (see [`matmul_wt_filled`]).
    Fill(&'a (dyn Fn(usize, usize, &mut [f32]) + Sync), usize),
}

fn gemm(m: usize, n: usize, k: usize, a: MatRef, b: BSrc) -> Vec<f32> {
    let mut c = out_buf(m * n, k);
    gemm_into(m, n, k, a, b, &mut c);
    c
}

/// The output of a product over `k`: zeros when `k == 0`, else not filled ([`gemm_into`]'s
/// first slice of `k` stores every element before anything reads it).
fn out_buf(len: usize, k: usize) -> Vec<f32> {
    if k == 0 {
        vec![0f32; len]
    } else {
        // SAFETY: gemm_into with k > 0 writes every element of its output (every tile of the
        // first slice of k is stored, masked to the output's edge) before any is read.
        unsafe { crate::kernels::uninit_f32(len) }
    }
}

/// Whether the AVX-512 kernel runs (else the AVX2 one), with the features it needs checked.
///
/// Panics when this machine runs neither (callers check [`available`]).
fn wide() -> bool {
    let f = crate::cpu::features();
    match crate::cpu::kernels().f32_gemm {
        crate::cpu::F32Gemm::Avx512 if f.avx512f && f.avx2_fma() => true,
        crate::cpu::F32Gemm::Avx2 if f.avx2_fma() => false,
        other => panic!("sgemm: no kernel of this GEMM runs here (picked: {other:?})"),
    }
}

/// [`gemm`] into `c` (m * n values): the first slice of `k` overwrites it, later slices add;
/// with `k == 0` it is left as it is, so callers pass zeros.
fn gemm_into(m: usize, n: usize, k: usize, a: MatRef, b: BSrc, c: &mut [f32]) {
    gemm_into_on(wide(), m, n, k, a, b, c)
}

/// [`gemm_into`] on the AVX-512 tile (`wide`) or the AVX2 one; the caller has checked that the
/// CPU has its features.
fn gemm_into_on(wide: bool, m: usize, n: usize, k: usize, a: MatRef, b: BSrc, c: &mut [f32]) {
    assert_eq!(c.len(), m * n, "sgemm: output for ({m}, {n})");
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    // A packed whole, once: row panel ip is [k][MR] at ip * k * MR (slice p0 at + p0 * MR)
    let mpanels = m.div_ceil(MR);
    let mut apack = AlignedBuf::new(mpanels * MR * k);
    apack
        .as_mut()
        .par_chunks_mut(MR * k)
        .enumerate()
        .for_each(|(ip, dst)| pack_a(a, ip * MR, (m - ip * MR).min(MR), 0, k, dst, wide));
    let ap = apack.as_slice();
    // tasks of `group` column panels: per slice of k, their B panels are packed (in L2) and
    // every row panel of A meets all of them while its slice is in L1
    let panels = n.div_ceil(NR);
    let threads = rayon::current_num_threads().max(1);
    let group = (panels / (2 * threads)).clamp(1, GROUP);
    let out = SendPtr(c.as_mut_ptr());
    (0..panels.div_ceil(group)).into_par_iter().for_each(|g| {
        let (jp0, jp1) = (g * group, ((g + 1) * group).min(panels));
        let mut bpack = AlignedBuf::new((jp1 - jp0) * KC * NR);
        // a filled weight: this task's rows, made once
        let first = jp0 * NR;
        let filled = match b {
            BSrc::Fill(fill, k) => {
                let rows = (jp1 * NR).min(n) - first;
                let mut buf = vec![0f32; rows * k];
                fill(first, rows, &mut buf);
                buf
            }
            _ => vec![],
        };
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let bp = bpack.as_mut();
            for jp in jp0..jp1 {
                let j0 = jp * NR;
                let at = (jp - jp0) * KC * NR;
                let dst = &mut bp[at..at + kc * NR];
                match b {
                    BSrc::F32(b) => pack_b(b, p0, kc, j0, NR.min(n - j0), dst, wide),
                    BSrc::Bf16Wt(w, k) => pack_b_bf16(w, k, p0, kc, j0, NR.min(n - j0), dst),
                    BSrc::Fill(_, k) => {
                        let w = MatRef::transposed(&filled, k);
                        pack_b(w, p0, kc, j0 - first, NR.min(n - j0), dst, wide)
                    }
                }
            }
            for ip in 0..mpanels {
                let r0 = ip * MR;
                let rows = MR.min(m - r0);
                let a_slice = ap[ip * MR * k + p0 * MR..].as_ptr();
                for jp in jp0..jp1 {
                    let j0 = jp * NR;
                    let cols = NR.min(n - j0);
                    let b_panel = bp[(jp - jp0) * KC * NR..].as_ptr();
                    let c_tile = out.get();
                    // SAFETY: the kernel's features were checked (`wide()`); the A slice holds
                    // kc * MR values and the B panel kc * NR; the tile (r0.., j0..) of rows x
                    // cols lies inside the m x n output, and this task is the only writer of
                    // its columns.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        let tile = if wide { avx512::tile } else { avx2::tile };
                        tile(
                            kc,
                            a_slice,
                            b_panel,
                            c_tile.add(r0 * n + j0),
                            n,
                            rows,
                            cols,
                            p0 == 0,
                        )
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    unreachable!("x86-64 only: {a_slice:?} {b_panel:?} {c_tile:?} {cols}")
                }
            }
        }
    });
}

/// `x (m, k) @ w (n, k)^T` -> (m, n) row-major with whichever f32 kernel this machine runs:
/// [`crate::skinny`] up to its row count, this GEMM where [`available`], else candle's (the
/// `gemm` crate). Panics on slices that do not match the shapes (callers check them first).
pub fn matmul_wt(x: &[f32], m: usize, k: usize, w: &[f32], n: usize) -> Vec<f32> {
    assert!(
        x.len() == m * k && w.len() == n * k,
        "sgemm::matmul_wt: x {} for ({m}, {k}), w {} for ({n}, {k})",
        x.len(),
        w.len()
    );
    if (1..=crate::skinny::MAX_ROWS).contains(&m) {
        return crate::skinny::matmul_wt(x, m, k, w, n);
    }
    if available() {
        return matmul(m, n, k, MatRef::row_major(x, k), MatRef::transposed(w, k));
    }
    use candle_core::{Device, Tensor};
    let run = || -> candle_core::Result<Vec<f32>> {
        let x = Tensor::from_slice(x, (m, k), &Device::Cpu)?;
        let w = Tensor::from_slice(w, (n, k), &Device::Cpu)?;
        x.matmul(&w.t()?)?.flatten_all()?.to_vec1()
    };
    run().expect("f32 GEMM of checked shapes")
}

/// A subnormal value as 0. Packing flushes them: an FMA with a subnormal operand takes a
/// microcode assist (~100 cycles) on x86. Measured: a softmax gradient over the 32128-token
/// vocabulary had 14% subnormal values, and the LM head's input-gradient GEMM took 300-490 ms
/// in a training step traced on a loaded machine, against ~34 ms for random operands of that
/// shape under the same load. The error is below 1.2e-38 per product.
#[inline(always)]
fn flush(v: f32) -> f32 {
    if v.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

/// Packs rows `i0..i0 + rows` of `a` over `p0..p0 + kc` as `[kc][MR]`, zero rows past `rows`.
/// A row-major `a` is transposed 8 x 8 in registers (it was 4% of a bf16 ViT forward one value
/// at a time); the columns past a multiple of 8, and other layouts, one value at a time.
fn pack_a(a: MatRef, i0: usize, rows: usize, p0: usize, kc: usize, dst: &mut [f32], wide: bool) {
    #[allow(unused_mut)]
    let mut pdone = 0;
    #[cfg(target_arch = "x86_64")]
    if a.cs == 1 {
        pdone = kc / 8 * 8;
        assert!(dst.len() >= kc * MR && (rows == 0 || a.fits(i0 + rows, p0 + kc)));
        // SAFETY: AVX2 was checked by `gemm_into`; rows i0..i0 + rows and columns
        // p0..p0 + pdone lie inside `a` (asserted), and `dst` holds kc * MR values.
        unsafe { avx2::pack_a_transposed(a, i0, rows, p0, pdone, dst) }
    } else if a.rs == 1 && rows > 0 {
        // a transposed view (the weight gradient's g^T): each step of k is a run of `rows`
        // values, copied as one masked vector (it was 6.5% of a tag-encoder training step
        // one value at a time)
        pdone = kc;
        assert!(dst.len() >= kc * MR && a.fits(i0 + rows, p0 + kc));
        // SAFETY: AVX-512 F where `wide`, else AVX2, was checked by `gemm_into`; rows
        // i0..i0 + rows of columns p0..p0 + kc lie inside `a` (asserted), and `dst` holds
        // kc * MR values.
        unsafe {
            if wide {
                avx512::pack_a_columns(a, i0, rows, p0, kc, dst)
            } else {
                avx2::pack_a_columns(a, i0, rows, p0, kc, dst)
            }
        }
    }
    for (p, d) in dst.chunks_exact_mut(MR).take(kc).enumerate().skip(pdone) {
        let col = (p0 + p) * a.cs;
        for (r, v) in d.iter_mut().enumerate() {
            *v = if r < rows {
                flush(a.data[(i0 + r) * a.rs + col])
            } else {
                0.0
            };
        }
    }
}

/// Packs columns `j0..j0 + cols` of `b` over rows `p0..p0 + kc` as `[kc][NR]`, zero columns
/// past `cols`.
fn pack_b(b: MatRef, p0: usize, kc: usize, j0: usize, cols: usize, dst: &mut [f32], wide: bool) {
    #[cfg(target_arch = "x86_64")]
    if b.cs == 1 && cols > 0 {
        assert!(dst.len() >= kc * NR && b.fits(p0 + kc, j0 + cols));
        // SAFETY: AVX-512 F where `wide`, else AVX2, was checked by `gemm_into`; rows
        // p0..p0 + kc of columns j0..j0 + cols lie inside `b` (asserted), and `dst` holds
        // kc * NR values.
        unsafe {
            if wide {
                avx512::pack_b_rows(b, p0, kc, j0, cols, dst)
            } else {
                avx2::pack_b_rows(b, p0, kc, j0, cols, dst)
            }
        };
        return;
    }
    if b.cs == 1 {
        for (p, d) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
            let s = (p0 + p) * b.rs + j0;
            for (d, &v) in d[..cols].iter_mut().zip(&b.data[s..s + cols]) {
                *d = flush(v);
            }
            d[cols..].fill(0.0);
        }
        return;
    }
    dst[..kc * NR].fill(0.0);
    let (mut jdone, mut pdone) = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if b.rs == 1 {
        // B = W^T: column j is a run of W's row j; 8 x 8 blocks transposed in registers
        (jdone, pdone) = (cols / 8 * 8, kc / 8 * 8);
        // SAFETY: AVX2 was checked by `gemm_into`; every block read lies inside the (kc, cols)
        // view (checked by `fits`), every write inside `dst`.
        unsafe { avx2::pack_transposed(b, p0, pdone, j0, jdone, dst) }
    }
    // the rest (or every column on other layouts) one value at a time
    for j in 0..cols {
        let base = (j0 + j) * b.cs + p0 * b.rs;
        let from = if j < jdone { pdone } else { 0 };
        for p in from..kc {
            dst[p * NR + j] = flush(b.data[base + p * b.rs]);
        }
    }
}

/// [`pack_b`] for `B = W^T` with `W (n, k)` row-major bf16: `dst[p * NR + j] = W[j0 + j][p0 + p]`
/// widened to f32, zero columns past `cols`. Subnormals are not checked in the 8 x 8 blocks: the
/// model's bf16 weights had theirs made 0 at load ([`crate::bf16::flush_subnormals`]); one
/// that was not would give the same product, only slower.
fn pack_b_bf16(
    w: &[half::bf16],
    k: usize,
    p0: usize,
    kc: usize,
    j0: usize,
    cols: usize,
    dst: &mut [f32],
) {
    dst[..kc * NR].fill(0.0);
    #[cfg(target_arch = "x86_64")]
    let (jdone, pdone) = {
        let (jdone, pdone) = (cols / 8 * 8, kc / 8 * 8);
        assert!(j0 + cols <= w.len() / k.max(1) && p0 + kc <= k);
        // SAFETY: AVX2 was checked by `gemm_into`; rows j0..j0 + cols of W and their columns
        // p0..p0 + kc lie inside `w` (asserted), and `dst` holds kc * NR values.
        unsafe { avx2::pack_transposed_bf16(w, k, p0, pdone, j0, jdone, dst) };
        (jdone, pdone)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (jdone, pdone) = (0, 0);
    for j in 0..cols {
        let row = &w[(j0 + j) * k + p0..(j0 + j) * k + p0 + kc];
        let from = if j < jdone { pdone } else { 0 };
        for (p, v) in row.iter().enumerate().skip(from) {
            dst[p * NR + j] = flush(v.to_f32());
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements through it (see `matmul`), and the buffer outlives them.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// An f32 buffer whose usable part starts on a 64-byte boundary (whole-register loads of
/// the packed panels never split a cache line). Not filled: the packing writes every value the
/// kernel reads.
struct AlignedBuf {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        // SAFETY: only the packers write it (every value of a panel, zero padding included),
        // and the microkernel reads only packed panels.
        let buf = unsafe { crate::kernels::uninit_f32(len + 16) };
        let start = buf.as_ptr().align_offset(64).min(16);
        Self { buf, start, len }
    }

    fn as_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }

    fn as_slice(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

/// The 256-bit kernels: the AVX2 tile and packers, and the packers both paths share (8 x 8
/// transposes; every AVX-512 CPU has AVX2).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// `dst[p * NR + j] = W[j0 + j][p0 + p]` for p < kc8, j < cols8 (multiples of 8), where
    /// `b` is `W^T` (rs == 1): 8 rows of W, 8 values each, transposed in registers.
    ///
    /// # Safety
    /// AVX2; the blocks lie inside `b.data` and `dst` holds `kc8 * NR` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_transposed(
        b: super::MatRef,
        p0: usize,
        kc8: usize,
        j0: usize,
        cols8: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc8 * NR && b.rs == 1);
        let (src, d) = (b.data.as_ptr(), dst.as_mut_ptr());
        for jb in (0..cols8).step_by(8) {
            let rows: [*const f32; 8] = std::array::from_fn(|q| src.add((j0 + jb + q) * b.cs + p0));
            for pb in (0..kc8).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|q| _mm256_loadu_ps(rows[q].add(pb)));
                store_transposed(r, d.add(pb * NR + jb));
            }
        }
    }

    /// [`pack_transposed`] for a row-major bf16 `W (n, k)`: 8 values of 8 rows widened to f32
    /// (a bf16 is the high half of an f32), then transposed.
    ///
    /// # Safety
    /// AVX2; rows `j0..j0 + cols8` of `w` and their columns `p0..p0 + kc8` lie inside
    /// `w`, and `dst` holds `kc8 * NR` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_transposed_bf16(
        w: &[half::bf16],
        k: usize,
        p0: usize,
        kc8: usize,
        j0: usize,
        cols8: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc8 * NR);
        let (src, d) = (w.as_ptr(), dst.as_mut_ptr());
        for jb in (0..cols8).step_by(8) {
            let rows: [*const half::bf16; 8] =
                std::array::from_fn(|q| src.add((j0 + jb + q) * k + p0));
            for pb in (0..kc8).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|q| {
                    let h = _mm_loadu_si128(rows[q].add(pb) as *const __m128i);
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
                });
                store_transposed_ld::<false>(r, d.add(pb * NR + jb), NR, 8);
            }
        }
    }

    /// `dst[p * MR + r] = A[i0 + r][p0 + p]` for p < kc8 (a multiple of 8) and r < MR, zero
    /// for r >= rows, where `a` is row-major (cs == 1): rows 0-7 and 8-11 as 8 x 8 blocks
    /// transposed in registers (the second with 4 zero rows, 4 lanes stored).
    ///
    /// # Safety
    /// AVX2; rows `i0..i0 + rows` and columns `p0..p0 + kc8` lie inside `a.data`, and `dst`
    /// holds `kc8 * MR` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_a_transposed(
        a: super::MatRef,
        i0: usize,
        rows: usize,
        p0: usize,
        kc8: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc8 * MR && a.cs == 1);
        let (src, d) = (a.data.as_ptr(), dst.as_mut_ptr());
        for (rb, lanes) in [(0, 8), (8, MR - 8)] {
            let have = rows.saturating_sub(rb).min(lanes);
            for pb in (0..kc8).step_by(8) {
                let r: [__m256; 8] = std::array::from_fn(|q| {
                    if q < have {
                        _mm256_loadu_ps(src.add((i0 + rb + q) * a.rs + p0 + pb))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                store_transposed_ld::<true>(r, d.add(pb * MR + rb), MR, lanes);
            }
        }
    }

    /// Stores the 8 x 8 transpose of `r` as 8 rows of 8 values `NR` apart from `d`, subnormals
    /// flushed to 0 (see [`super::flush`]).
    ///
    /// # Safety
    /// AVX2; `d` is valid for 8 rows of 8 values `NR` apart.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_transposed(r: [__m256; 8], d: *mut f32) {
        store_transposed_ld::<true>(r, d, NR, 8)
    }

    /// [`store_transposed`] with rows `ld` apart, only the first `lanes` (8 or 4) values of each
    /// row stored, and subnormals flushed only when `FLUSH`.
    ///
    /// # Safety
    /// AVX2; `d` is valid for 8 rows of `lanes` values `ld` apart.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn store_transposed_ld<const FLUSH: bool>(
        r: [__m256; 8],
        d: *mut f32,
        ld: usize,
        lanes: usize,
    ) {
        debug_assert!(lanes == 8 || lanes == 4);
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let tiny = _mm256_set1_ps(f32::MIN_POSITIVE);
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (i, &v) in out.iter().enumerate() {
            // subnormals to 0: keep lanes unless |v| < MIN_POSITIVE
            let v = if FLUSH {
                // not-less-than, unordered: NaN lanes are kept (NaN must reach the output)
                let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_and_ps(v, abs), tiny);
                _mm256_and_ps(v, keep)
            } else {
                v
            };
            if lanes == 8 {
                _mm256_storeu_ps(d.add(i * ld), v);
            } else {
                _mm_storeu_ps(d.add(i * ld), _mm256_castps256_ps128(v));
            }
        }
    }

    /// An 8-lane mask whose first `n` lanes (at most 8) are set, for masked loads and stores.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn lanes(n: usize) -> __m256i {
        let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), idx)
    }

    /// 8 values with subnormals made 0 (see [`super::flush`]) and NaN kept.
    ///
    /// # Safety
    /// AVX2.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn flush8(v: __m256) -> __m256 {
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let tiny = _mm256_set1_ps(f32::MIN_POSITIVE);
        // not-less-than, unordered: NaN lanes are kept (NaN must reach the output)
        _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_and_ps(v, abs), tiny))
    }

    /// The AVX2 copy of `avx512::pack_b_rows`: `dst[p * NR + j] = b[p0 + p][j0 + j]` for
    /// p < kc, zero for j >= cols, where `b` is row-major (cs == 1); subnormals flushed to 0,
    /// NaN kept.
    ///
    /// # Safety
    /// AVX2; `cols <= NR`, rows `p0..p0 + kc` of columns `j0..j0 + cols` lie inside `b.data`,
    /// and `dst` holds `kc * NR` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_b_rows(
        b: super::MatRef,
        p0: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc * NR && b.cs == 1 && cols <= NR);
        let (src, d) = (b.data.as_ptr(), dst.as_mut_ptr());
        let masks: [__m256i; NR / 8] = std::array::from_fn(|q| lanes(cols.saturating_sub(q * 8)));
        for p in 0..kc {
            let s = src.add((p0 + p) * b.rs + j0);
            for (q, &mask) in masks.iter().enumerate() {
                let v = if cols >= (q + 1) * 8 {
                    _mm256_loadu_ps(s.add(q * 8))
                } else {
                    // masked-off lanes are not read (they may lie past the data)
                    _mm256_maskload_ps(s.wrapping_add(q * 8), mask)
                };
                _mm256_storeu_ps(d.add(p * NR + q * 8), flush8(v));
            }
        }
    }

    /// The AVX2 copy of `avx512::pack_a_columns`: `dst[p * MR + r] = a[i0 + r][p0 + p]` for
    /// p < kc, zero for r >= rows, where `a` is a transposed view (rs == 1); subnormals flushed
    /// to 0, NaN kept.
    ///
    /// # Safety
    /// AVX2; `rows <= MR`, rows `i0..i0 + rows` of columns `p0..p0 + kc` lie inside `a.data`,
    /// and `dst` holds `kc * MR` values.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn pack_a_columns(
        a: super::MatRef,
        i0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        dst: &mut [f32],
    ) {
        const { assert!(MR > 8 && MR <= 16) };
        debug_assert!(dst.len() >= kc * MR && a.rs == 1 && rows <= MR);
        let (src, d) = (a.data.as_ptr(), dst.as_mut_ptr());
        let (m0, m1) = (lanes(rows), lanes(rows.saturating_sub(8)));
        // the last MR - 8 values of a step: the first lanes of a second register
        let tail = lanes(MR - 8);
        for p in 0..kc {
            let s = src.add(i0 + (p0 + p) * a.cs);
            let lo = _mm256_maskload_ps(s, m0);
            let hi = _mm256_maskload_ps(s.wrapping_add(8), m1);
            _mm256_storeu_ps(d.add(p * MR), flush8(lo));
            _mm256_maskstore_ps(d.add(p * MR + 8), tail, flush8(hi));
        }
    }

    /// The AVX2 copy of `avx512::tile` (same arguments, same sums bit for bit: each element of
    /// `C` is one FMA chain over `k` in order from zero, then stored or added to `C`): the
    /// 12 x 32 tile as up to four 6 x 16 blocks, each held in 12 registers (per step of `k` two
    /// loads of `B`, six broadcasts of `A`, 12 FMAs). Blocks wholly past `rows` or `cols` are
    /// skipped.
    ///
    /// # Safety
    /// AVX2 and FMA; `a` holds `kc * MR` values, `b` `kc * NR`; `c` is valid for `rows` rows of
    /// `cols` values `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        first: bool,
    ) {
        for c0 in (0..cols).step_by(16) {
            for r0 in (0..rows).step_by(6) {
                let (r, n) = ((rows - r0).min(6), (cols - c0).min(16));
                block(
                    kc,
                    a.add(r0),
                    b.add(c0),
                    c.add(r0 * ldc + c0),
                    ldc,
                    r,
                    n,
                    first,
                );
            }
        }
    }

    /// One 6 x 16 block of [`tile`]: `a` and `b` point at its first row and column inside the
    /// packed panels (rows `MR` apart, columns `NR` apart).
    ///
    /// # Safety
    /// As [`tile`], for `rows <= 6` and `cols <= 16`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn block(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        first: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; 6];
        for p in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(p * NR));
            let b1 = _mm256_loadu_ps(b.add(p * NR + 8));
            let ap = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        }
        let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(8)));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let cr = c.add(r * ldc);
            if cols == 16 {
                if first {
                    _mm256_storeu_ps(cr, acc[0]);
                    _mm256_storeu_ps(cr.add(8), acc[1]);
                } else {
                    _mm256_storeu_ps(cr, _mm256_add_ps(_mm256_loadu_ps(cr), acc[0]));
                    _mm256_storeu_ps(cr.add(8), _mm256_add_ps(_mm256_loadu_ps(cr.add(8)), acc[1]));
                }
                continue;
            }
            for (h, (mask, acc)) in [(m0, acc[0]), (m1, acc[1])].into_iter().enumerate() {
                if cols <= h * 8 {
                    break;
                }
                let ch = cr.add(h * 8);
                let v = if first {
                    acc
                } else {
                    _mm256_add_ps(_mm256_maskload_ps(ch, mask), acc)
                };
                _mm256_maskstore_ps(ch, mask, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR};
    use std::arch::x86_64::*;

    /// 16 values with subnormals made 0 (see [`super::flush`]) and NaN kept.
    ///
    /// # Safety
    /// AVX-512 F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn flush16(v: __m512) -> __m512 {
        // not-less-than, unordered: NaN lanes are kept (NaN must reach the output)
        let tiny = _mm512_set1_ps(f32::MIN_POSITIVE);
        _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLT_UQ>(_mm512_abs_ps(v), tiny), v)
    }

    /// `dst[p * NR + j] = b[p0 + p][j0 + j]` for p < kc, zero for j >= cols, where `b` is
    /// row-major (cs == 1: a step of k is a run of `cols` values); subnormals flushed to 0, NaN
    /// kept. (The input gradient's `g @ W` and attention's `P V` take it; one value at a time it
    /// was 6% of a training step.)
    ///
    /// # Safety
    /// AVX-512 F; `cols <= NR`, rows `p0..p0 + kc` of columns `j0..j0 + cols` lie inside
    /// `b.data`, and `dst` holds `kc * NR` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_b_rows(
        b: super::MatRef,
        p0: usize,
        kc: usize,
        j0: usize,
        cols: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc * NR && b.cs == 1 && cols <= NR);
        let (src, d) = (b.data.as_ptr(), dst.as_mut_ptr());
        let mask = |c: usize| ((1u32 << c.min(16)) - 1) as __mmask16;
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for p in 0..kc {
            let s = src.add((p0 + p) * b.rs + j0);
            _mm512_storeu_ps(d.add(p * NR), flush16(_mm512_maskz_loadu_ps(m0, s)));
            let hi = _mm512_maskz_loadu_ps(m1, s.wrapping_add(16));
            _mm512_storeu_ps(d.add(p * NR + 16), flush16(hi));
        }
    }

    /// `dst[p * MR + r] = a[i0 + r][p0 + p]` for p < kc, zero for r >= rows, where `a` is a
    /// transposed view (rs == 1: the `rows` values of a step of k are contiguous); subnormals
    /// flushed to 0, NaN kept.
    ///
    /// # Safety
    /// AVX-512 F; `rows <= MR`, rows `i0..i0 + rows` of columns `p0..p0 + kc` lie inside
    /// `a.data`, and `dst` holds `kc * MR` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pack_a_columns(
        a: super::MatRef,
        i0: usize,
        rows: usize,
        p0: usize,
        kc: usize,
        dst: &mut [f32],
    ) {
        debug_assert!(dst.len() >= kc * MR && a.rs == 1 && rows <= MR);
        let (src, d) = (a.data.as_ptr(), dst.as_mut_ptr());
        let load = ((1u32 << rows) - 1) as __mmask16;
        let store = ((1u32 << MR) - 1) as __mmask16;
        for p in 0..kc {
            let v = _mm512_maskz_loadu_ps(load, src.add(i0 + (p0 + p) * a.cs));
            _mm512_mask_storeu_ps(d.add(p * MR), store, flush16(v));
        }
    }

    /// `c[r * ldc + j] += sum_p a[p * MR + r] * b[p * NR + j]` for r < rows, j < cols, or `=`
    /// when `first` (the first slice of `k`: the output is written before it is ever read, so a
    /// fresh zeroed allocation takes one page fault per page, not a read of the shared zero page
    /// and then a copy-on-write fault with a TLB shootdown across the threads; measured as
    /// 10-15% of a training step's samples before).
    ///
    /// # Safety
    /// AVX-512 F; `a` holds `kc * MR` values, `b` `kc * NR`; `c` is valid for `rows` rows of
    /// `cols` values `ldc` apart.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        rows: usize,
        cols: usize,
        first: bool,
    ) {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let ap = a.add(p * MR);
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(r));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        let mask = |c: usize| ((1u32 << c.min(16)) - 1) as __mmask16;
        let (m0, m1) = (mask(cols), mask(cols.saturating_sub(16)));
        for (r, acc) in acc.iter().enumerate().take(rows) {
            let cr = c.add(r * ldc);
            if first {
                _mm512_mask_storeu_ps(cr, m0, acc[0]);
                if m1 != 0 {
                    _mm512_mask_storeu_ps(cr.add(16), m1, acc[1]);
                }
                continue;
            }
            let c0 = _mm512_maskz_loadu_ps(m0, cr);
            _mm512_mask_storeu_ps(cr, m0, _mm512_add_ps(c0, acc[0]));
            if m1 != 0 {
                let c1 = _mm512_maskz_loadu_ps(m1, cr.add(16));
                _mm512_mask_storeu_ps(cr.add(16), m1, _mm512_add_ps(c1, acc[1]));
            }
        }
    }
}

/// `a (m, k) @ b (k, n)` for 2-D tensors, or batched `a (.., m, k) @ b (.., k, n)` with equal
/// leading dims (no broadcasting): on this kernel for f32 CPU tensors of any strides when
/// [`available`] and the product has more than [`crate::skinny::MAX_ROWS`] rows (batched) or
/// any rows (2-D), else candle's matmul. No backward: callers use it inside backward passes or
/// through [`bmm`].
pub fn matmul_tensors(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    let cpu_f32 = a.device().is_cpu()
        && b.device().is_cpu()
        && a.dtype() == candle_core::DType::F32
        && b.dtype() == candle_core::DType::F32;
    let (ra, rb) = (a.rank(), b.rank());
    let batched_ok = ra == rb
        && ra > 2
        && a.dims()[..ra - 2] == b.dims()[..rb - 2]
        && a.dims()[ra - 2] > crate::skinny::MAX_ROWS;
    if cpu_f32 && ra == rb && ra > 2 && a.dims()[..ra - 2] == b.dims()[..rb - 2] {
        // a few rows (attention while decoding with beams): candle's bits, without its
        // per-item packing, when candle would multiply these layouts as they are
        let (m, k, n) = (a.dims()[ra - 2], a.dims()[ra - 1], b.dims()[rb - 1]);
        let as_is = a.is_contiguous() && (b.is_contiguous() || b.t()?.is_contiguous());
        if as_is
            && b.dims()[rb - 2] == k
            && crate::few_rows::candle_order(m, n, k, a.stride()[ra - 1], b.stride()[rb - 2])
        {
            return a.apply_op2_no_bwd(b, &crate::few_rows::FewRows);
        }
    }
    if available() && cpu_f32 && ((ra == 2 && rb == 2) || batched_ok) {
        a.apply_op2_no_bwd(b, &Matmul)
    } else {
        // candle's matmul refuses some strides this kernel takes (e.g. a permuted batch dim):
        // then on contiguous copies, so a caller gets the same answer on every CPU
        a.matmul(b)
            .or_else(|_| a.contiguous()?.matmul(&b.contiguous()?))
    }
}

/// `a @ b` as candle's `matmul` computes it (2-D, or batched over equal leading dims): on this
/// kernel ([`matmul_tensors`]) when neither operand takes part in autograd (inference, or
/// detached values inside a backward), else candle's matmul, which records the op for the
/// backward. Attention's score and context products go through here.
pub fn bmm(
    a: &candle_core::Tensor,
    b: &candle_core::Tensor,
) -> candle_core::Result<candle_core::Tensor> {
    if a.track_op() || b.track_op() {
        a.matmul(b)
    } else {
        matmul_tensors(a, b)
    }
}

struct Matmul;

/// Whether `a (m, k) @ b (k, n)` runs faster as `(b^T a^T)^T`: a transposed view `a`
/// (attention's backward `p^T @ g`, rows of `p` in memory) with a row-major `b` of a few columns
/// against many rows. Packing `a` as it is reads `m` values per step of `k` from another row of
/// `p` (a strided walk over all of `p`); swapped, `p` is packed along its rows and the strided
/// walk is over the narrow `b`. On an AMD EPYC Zen 3 (AVX2, 2 cores), 24 heads of
/// (349 x 349)^T @ (349 x 64) (`examples/gemm_shapes.rs`): 60-80 -> 91-93 GFLOP/s. Batched
/// products only: the 2-D weight gradients `g^T @ x` of (1536 x 1344)^T @ (1344 x 384) and
/// (3072 x 514)^T @ (514 x 768) ran 0.93-1.13x their plain path swapped, so they keep it.
fn tall_transposed(m: usize, n: usize, a: MatRef, b: MatRef) -> bool {
    a.rs == 1 && a.cs >= m && b.cs == 1 && b.rs >= n && m >= 4 * n
}

impl candle_core::CustomOp2 for Matmul {
    fn name(&self) -> &'static str {
        "lion-sgemm"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::CpuStorage;
        let (da, db) = (l1.dims(), l2.dims());
        let r = da.len();
        if r < 2 || db.len() != r || da[..r - 2] != db[..r - 2] {
            candle_core::bail!("lion-sgemm: {:?} @ {:?}", da, db)
        }
        let (m, k, k2, n) = (da[r - 2], da[r - 1], db[r - 2], db[r - 1]);
        if k != k2 {
            candle_core::bail!("lion-sgemm: {:?} @ {:?}", da, db)
        }
        let (CpuStorage::F32(x), CpuStorage::F32(y)) = (s1, s2) else {
            candle_core::bail!("lion-sgemm: f32 operands only")
        };
        let batch: usize = da[..r - 2].iter().product();
        let mut c = out_buf(batch * m * n, k);
        let item = |(i, ci): (usize, &mut [f32])| {
            let (a, b) = (MatRef::batch_item(x, l1, i), MatRef::batch_item(y, l2, i));
            assert!(
                a.fits(m, k) && b.fits(k, n),
                "sgemm: views do not fit ({m}, {k}) x ({k}, {n})"
            );
            if batch > 1 && tall_transposed(m, n, a, b) {
                // C^T = B^T A^T: A^T is then read along its rows (contiguous) and the strided
                // operand is the narrow B^T; every element is the same FMA chain (the products'
                // factors swap), so the same bits
                let mut ct = out_buf(n * m, k);
                let bt = MatRef {
                    data: b.data,
                    rs: b.cs,
                    cs: b.rs,
                };
                let at = MatRef {
                    data: a.data,
                    rs: a.cs,
                    cs: a.rs,
                };
                gemm_into(n, m, k, bt, BSrc::F32(at), &mut ct);
                for (i, row) in ci.chunks_exact_mut(n).enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = ct[j * m + i];
                    }
                }
            } else {
                gemm_into(m, n, k, a, BSrc::F32(b), ci)
            }
        };
        if batch == 1 {
            // on this thread: a rayon worker would pack `A` into its own malloc arena, where a
            // block of megabytes gets a fresh mapping each time (glibc maps a new heap for it
            // and unmaps the heap when it is free again). Measured: 150k page faults per
            // tag-encoder training step (600 MB made and zeroed) with the weight gradients'
            // `g^T @ x` packed on a worker, 1.3x the step's time.
            item((0, &mut c[..]))
        } else if m * n > 0 {
            c.par_chunks_mut(m * n).enumerate().for_each(item);
        }
        let mut shape = da.to_vec();
        shape[r - 1] = n;
        Ok((CpuStorage::F32(c), candle_core::Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The swapped path is taken for attention's backward `p^T @ g` at T5's shape (so the
    /// bit-for-bit test in tests/linear.rs exercises it), and not for a row-major `A`, a
    /// transposed `B`, or rows fewer than 4x the columns (the tag encoder's 42 x 32 heads).
    #[test]
    fn the_tall_transposed_product_takes_the_swapped_path() {
        let (t, d) = (349, 64);
        let p = vec![0f32; t * t];
        let g = vec![0f32; t * d];
        let pt = MatRef::transposed(&p, t);
        assert!(tall_transposed(t, d, pt, MatRef::row_major(&g, d)));
        assert!(!tall_transposed(
            t,
            d,
            MatRef::row_major(&p, t),
            MatRef::row_major(&g, d)
        ));
        assert!(!tall_transposed(t, d, pt, MatRef::transposed(&g, t)));
        let (t, d) = (42, 32);
        assert!(!tall_transposed(
            t,
            d,
            MatRef::transposed(&p[..t * t], t),
            MatRef::row_major(&g[..t * d], d)
        ));
    }

    /// The AVX2 tile and packers give the AVX-512 ones' bits, on edge shapes of the tile and
    /// the slices, every packing layout, and subnormal and NaN inputs (where the CPU has both;
    /// skipped with a printed reason otherwise).
    #[test]
    fn avx2_tile_gives_the_avx512_bits() {
        let f = crate::cpu::features();
        if !(f.avx512f && f.avx2_fma()) {
            eprintln!("skipped: needs AVX-512 F and AVX2 + FMA (this CPU: {f:?})");
            return;
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            match seed % 4001 {
                0..=40 => 1e-39, // subnormal
                41 => f32::NAN,
                _ => (seed >> 40) as f32 / (1u64 << 23) as f32 - 1.0,
            }
        };
        for (m, n, k) in [
            (1, 1, 1),
            (7, 17, 9),
            (12, 32, 256),
            (13, 33, 257),
            (30, 70, 600),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
            // (name, A view, B view): row-major, W^T, and a transposed A
            let views = [
                (MatRef::row_major(&a, k), MatRef::row_major(&b, n)),
                (MatRef::row_major(&a, k), MatRef::transposed(&b, k)),
                (MatRef::transposed(&a, m), MatRef::row_major(&b, n)),
            ];
            for (i, (av, bv)) in views.into_iter().enumerate() {
                let run = |wide| {
                    let mut c = vec![0f32; m * n];
                    gemm_into_on(wide, m, n, k, av, BSrc::F32(bv), &mut c);
                    c
                };
                let (wide, narrow) = (run(true), run(false));
                for (j, (x, y)) in wide.iter().zip(&narrow).enumerate() {
                    assert!(
                        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                        "({m}, {k}) x ({k}, {n}), layout {i}, element {j}: {x} vs {y}"
                    );
                }
            }
        }
    }
}
