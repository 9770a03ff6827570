//! A lookup table (token or position embeddings): `ids (...) u32 -> (..., dim)` rows of an
//! `(n, dim)` table, as `candle_nn::Embedding`, except that a frozen table its checkpoint stores
//! in bf16 stays bf16 ([`crate::linear::get_as_stored`]) and the gathered rows
//! are widened to f32: exactly the values of an f32 copy, with half the memory (Flan-T5-XL's
//! 32128 x 2048 table is 263 MB in f32).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    dim: usize,
    /// A bf16 table of an f32 model: rows widened to f32 as they are gathered.
    widened: bool,
}

impl Embedding {
    /// A table (n, dim) as given: rows come out in its dtype.
    pub fn new(table: Tensor, dim: usize) -> Self {
        Self {
            table,
            dim,
            widened: false,
        }
    }

    /// Key `weight` (n, dim) of `vb`, read as stored where that is exact
    /// ([`crate::linear::get_as_stored`]): from an f32 `vb` (an f32 model, or `--dtype bf16`,
    /// whose activations are f32 too), a bf16 table's rows come out in f32.
    pub fn load(vb: &VarBuilder, n: usize, dim: usize, init: Init) -> Result<Self> {
        let table = crate::linear::get_as_stored(vb, (n, dim), "weight", init)?;
        let widened = vb.dtype() == DType::F32 && table.dtype() == DType::BF16;
        Ok(Self {
            table,
            dim,
            widened,
        })
    }

    /// The table (n, dim), in the dtype it is kept in.
    pub fn embeddings(&self) -> &Tensor {
        &self.table
    }
}

impl Module for Embedding {
    /// ids (...) u32 -> (..., dim)
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.dim);
        let rows = self.table.index_select(&ids.flatten_all()?, 0)?;
        let rows = match self.widened {
            true => rows.to_dtype(DType::F32)?,
            false => rows,
        };
        rows.reshape(shape)
    }
}
