//! The few-rows batched product (attention while decoding with beams) gives candle's matmul
//! bit for bit wherever `few_rows::candle_order` sends a product to it, and `sgemm::bmm` (the
//! route attention takes) agrees with candle on every shape of up to `few_rows::MAX_ROWS` rows,
//! taken or not (more rows go to `sgemm`'s own tiles, another order).

use candle_core::{Device, Tensor};
use lion_core::few_rows;
use lion_core::sgemm::MatRef;
use lion_core::testing::f32_bits as bits;

/// Random f32 data in [-1, 1) from a seed (the same data on every run).
fn uniform(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn few_rows_products_give_candles_bits() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let mut taken = 0;
    for m in [1, 2, 5, 6, 7, 13, 16] {
        for k in [2, 3, 64, 349, 512, 513, 1100] {
            for n in [1, 2, 17, 64, 65, 349] {
                let seed = (m * 1_000_000 + k * 1000 + n) as u32;
                let a = Tensor::from_vec(uniform(2 * 3 * m * k, seed), (2, 3, m, k), &dev)?;
                // b row-major, and b as the transposed view of a row-major (n, k) (K^T)
                let b_rows =
                    Tensor::from_vec(uniform(2 * 3 * k * n, seed + 1), (2, 3, k, n), &dev)?;
                let b_t =
                    Tensor::from_vec(uniform(2 * 3 * n * k, seed + 2), (2, 3, n, k), &dev)?.t()?;
                for b in [&b_rows, &b_t] {
                    let want = a.matmul(b)?;
                    let got = lion_core::sgemm::bmm(&a, b)?;
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "bmm {m}x{k}x{n} b strides {:?}",
                        b.stride()
                    );
                    let (a_cs, b_rs) = (a.stride()[3], b.stride()[2]);
                    if !few_rows::candle_order(m, n, k, a_cs, b_rs) {
                        continue;
                    }
                    taken += 1;
                    // the kernel itself on the first batch item (not only the route)
                    let av = a.get(0)?.get(0)?.flatten_all()?.to_vec1::<f32>()?;
                    let bc = b
                        .get(0)?
                        .get(0)?
                        .contiguous()?
                        .flatten_all()?
                        .to_vec1::<f32>()?;
                    let (rs, cs) = (n, 1);
                    let mut out = vec![f32::NAN; m * n];
                    few_rows::matmul_into(
                        m,
                        n,
                        k,
                        MatRef {
                            data: &av,
                            rs: k,
                            cs: 1,
                        },
                        MatRef { data: &bc, rs, cs },
                        &mut out,
                    );
                    let want0: Vec<u32> = bits(&want.get(0)?.get(0)?);
                    let got0: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(got0, want0, "few_rows {m}x{k}x{n}");
                    // and from the transposed layout as stored
                    if b_rs == 1 {
                        let stored = b.get(0)?.get(0)?.t()?.contiguous()?.flatten_all()?;
                        let stored = stored.to_vec1::<f32>()?;
                        let mut out = vec![f32::NAN; m * n];
                        few_rows::matmul_into(
                            m,
                            n,
                            k,
                            MatRef {
                                data: &av,
                                rs: k,
                                cs: 1,
                            },
                            MatRef {
                                data: &stored,
                                rs: 1,
                                cs: k,
                            },
                            &mut out,
                        );
                        let got0: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
                        assert_eq!(got0, want0, "few_rows transposed {m}x{k}x{n}");
                    }
                }
            }
        }
    }
    assert!(
        taken > 100,
        "only {taken} products took the few-rows kernel"
    );
    Ok(())
}

/// Cross-attention while decoding with 5 beams, as T5 runs it (5 query rows per head against
/// one K and V): scores and context equal candle's bit for bit.
#[test]
fn beam_cross_attention_gives_candles_bits() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let (h, g, t, d) = (8, 5, 349, 64);
    let q = Tensor::from_vec(uniform(h * g * d, 7), (1, h, g, d), &dev)?;
    let k = Tensor::from_vec(uniform(h * t * d, 8), (1, h, t, d), &dev)?;
    let v = Tensor::from_vec(uniform(h * t * d, 9), (1, h, t, d), &dev)?;
    let mask = Tensor::zeros((1, 1, g, t), candle_core::DType::F32, &dev)?;
    let got = lion_core::kernels::attention(&q, &k, &v, 1.0, &[&mask], 0.0)?;
    let scores = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
    let probs = lion_core::kernels::softmax_last_dim(&scores)?;
    let want = probs.matmul(&v)?;
    assert_eq!(bits(&got), bits(&want));
    Ok(())
}
