//! im2col for 3x3 convolutions with padding 1 over channels-last (NHWC) images, with its
//! backward (col2im): a 3x3 convolution is then one GEMM ([`crate::convnet`]).
//!
//! candle's `conv2d` on the CPU trains a small CNN about 4x slower than this: its backward runs
//! transposed convolutions through generic paths. Channels-last keeps every copy here a
//! contiguous run of `c` values, and the GEMM's output is already channels-last, so no permute
//! sits between layers.

use super::*;

/// Output side of a 3x3, padding 1 convolution with `stride` over a side of `n`.
pub fn conv3x3_out(n: usize, stride: usize) -> usize {
    (n + 2 - 3) / stride + 1
}

/// xs: (b, h, w, c) -> (b, ho, wo, 9 c): column `(ky * 3 + kx) * c + ci` of output pixel
/// (oy, ox) holds `xs[b, oy * stride + ky - 1, ox * stride + kx - 1, ci]`, zero outside the
/// image. Differentiable; fused CPU kernel for contiguous f32 on the CPU, plain candle ops
/// (zero padding and `index_select`) elsewhere.
pub fn im2col3x3(xs: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, h, w, c) = xs.dims4()?;
    if stride == 0 || h == 0 || w == 0 || c == 0 {
        candle_core::bail!("im2col3x3: stride {stride} over (h {h}, w {w}, c {c}): all must be > 0")
    }
    if xs.dtype() == DType::F32 && fused(xs.device()) {
        xs.contiguous()?.apply_op1(Im2Col { stride })
    } else {
        im2col3x3_plain(xs, stride)
    }
}

/// [`im2col3x3`] from candle ops (the GPU path, and the reference of the fused kernel's tests).
pub fn im2col3x3_plain(xs: &Tensor, stride: usize) -> Result<Tensor> {
    let (_, h, w, _) = xs.dims4()?;
    let (ho, wo) = (conv3x3_out(h, stride), conv3x3_out(w, stride));
    let padded = xs.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let dev = xs.device();
    let index = |k: usize, n: usize| {
        let idx: Vec<u32> = (0..n).map(|o| (o * stride + k) as u32).collect();
        Tensor::from_vec(idx, n, dev)
    };
    let mut taps = Vec::with_capacity(9);
    for ky in 0..3 {
        let rows = padded.index_select(&index(ky, ho)?, 1)?;
        for kx in 0..3 {
            taps.push(rows.index_select(&index(kx, wo)?, 2)?);
        }
    }
    Tensor::cat(&taps, 3)
}

/// The input pixel (iy, ix) tap (ky, kx) of output pixel (oy, ox) reads, if inside the image.
#[inline(always)]
fn source(o: usize, k: usize, stride: usize, n: usize) -> Option<usize> {
    (o * stride + k).checked_sub(1).filter(|&i| i < n)
}

/// Geometry of one 3x3, padding 1 convolution over an h x w image.
#[derive(Clone, Copy)]
struct Taps {
    stride: usize,
    h: usize,
    w: usize,
    wo: usize,
    c: usize,
}

impl Taps {
    /// Calls `f(column, pixel)` for every tap of output row `oy` inside the image, in the order
    /// (ky, ox, kx): `column` is where the tap's `c` values start in that row of the im2col
    /// matrix (`ox * 9 c + (ky * 3 + kx) * c`), `pixel` the input pixel `iy * w + ix` it reads.
    /// Im2Col copies along these pairs and Col2Im adds back along them in the same order.
    #[inline(always)]
    fn for_each_in_row(&self, oy: usize, mut f: impl FnMut(usize, usize)) {
        let Taps {
            stride,
            h,
            w,
            wo,
            c,
        } = *self;
        for ky in 0..3 {
            let Some(iy) = source(oy, ky, stride, h) else {
                continue;
            };
            for ox in 0..wo {
                for kx in 0..3 {
                    if let Some(ix) = source(ox, kx, stride, w) {
                        f(ox * 9 * c + (ky * 3 + kx) * c, iy * w + ix);
                    }
                }
            }
        }
    }
}

struct Im2Col {
    stride: usize,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "lion-im2col3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, self.name())?;
        let (b, h, w, c) = l.shape().dims4()?;
        let st = self.stride;
        let (ho, wo) = (conv3x3_out(h, st), conv3x3_out(w, st));
        let row = wo * 9 * c;
        let mut out = vec![0f32; b * ho * row];
        // One output row (image bi, row oy) per task unit; zeros stay where a tap is outside.
        let taps = Taps {
            stride: st,
            h,
            w,
            wo,
            c,
        };
        out.par_chunks_mut(row).enumerate().for_each(|(r, orow)| {
            let (bi, oy) = (r / ho, r % ho);
            let img = &x[bi * h * w * c..(bi + 1) * h * w * c];
            taps.for_each_in_row(oy, |at, pix| {
                orow[at..at + c].copy_from_slice(&img[pix * c..(pix + 1) * c]);
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, 9 * c))))
    }

    /// The input gradient: every column's gradient added back at the pixel it was read from.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (_, h, w, _) = arg.dims4()?;
        let op = Col2Im {
            stride: self.stride,
            h,
            w,
        };
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// (b, ho, wo, 9 c) -> (b, h, w, c): the adjoint of [`Im2Col`].
struct Col2Im {
    stride: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "lion-col2im3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(s, l, self.name())?;
        let (b, ho, wo, c9) = l.shape().dims4()?;
        let (h, w, st) = (self.h, self.w, self.stride);
        if c9 % 9 != 0 || ho != conv3x3_out(h, st) || wo != conv3x3_out(w, st) {
            candle_core::bail!(
                "{}: gradient shape {:?} does not fit {h}x{w}",
                self.name(),
                l.dims()
            )
        }
        let c = c9 / 9;
        let mut out = vec![0f32; b * h * w * c];
        // One image per task: images' gradients are disjoint, taps of one image overlap.
        let taps = Taps {
            stride: st,
            h,
            w,
            wo,
            c,
        };
        out.par_chunks_mut(h * w * c)
            .enumerate()
            .for_each(|(bi, img)| {
                let gi = &g[bi * ho * wo * c9..(bi + 1) * ho * wo * c9];
                for (oy, grow) in gi.chunks_exact(wo * c9).enumerate() {
                    taps.for_each_in_row(oy, |at, pix| {
                        let dst = &mut img[pix * c..(pix + 1) * c];
                        for (d, &v) in dst.iter_mut().zip(&grow[at..at + c]) {
                            *d += v;
                        }
                    });
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}
