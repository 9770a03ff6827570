//! LION's mixture of adapters: bottleneck adapters placed in parallel with every T5 feed-forward
//! block, mixed per channel by a router chosen by the task.
//!
//! Reference: JiuTian-LION `models/lion_adapters.py` (`Adapter`, `AdapterRouter`, `forward_ffn_t5`,
//! `set_adapter_t5`) @7578437; docs/DESIGN.md §4.
//! Checkpoint keys, relative to a T5 FFN layer (`encoder.block.{i}.layer.1` /
//! `decoder.block.{i}.layer.2`):
//! - `adapter.adapters.{0,1}.down_proj.{weight (bottleneck, d), bias (bottleneck,)}`
//! - `adapter.adapters.{0,1}.up_proj.{weight (d, bottleneck), bias (d,)}`
//! - `adapter.adapters.{0,1}.scale (1,)`
//! - `adapter.router_ratio1`, `adapter.router_ratio2` `(2, d)`: only with two adapters.
//!
//! Upstream selects the route by mutating global state (`set_router_idx`); here the [`Route`] is an
//! argument of every forward.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

use std::cell::Cell;
use std::sync::OnceLock;

use crate::linear::Linear;

/// Which adapter mix the router applies. Upstream: `idx = int(category != "region_level")`
/// (`lion_t5.py` L333, L374), so region-level tasks use row 0 and everything else row 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Region-level tasks (REC / grounding): router row 0.
    RegionLevel = 0,
    /// Image-level tasks (captioning, VQA, ...): router row 1.
    ImageLevel = 1,
}

impl Route {
    /// The router row this route selects.
    pub fn index(self) -> usize {
        self as usize
    }

    /// As upstream: `"region_level"` routes to [`Route::RegionLevel`], any other category to
    /// [`Route::ImageLevel`].
    pub fn from_category(category: &str) -> Self {
        if category == "region_level" {
            Route::RegionLevel
        } else {
            Route::ImageLevel
        }
    }
}

fn default_bottleneck() -> usize {
    64
}

/// Adapter settings (LION: bottleneck 64; 2 adapters + router for `visual_input = "ALL"`, 1 adapter
/// and no router for `"QFORMER"` / `"AGGREGATOR"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterConfig {
    /// Width of the model stream (T5 `d_model`).
    pub d_model: usize,
    /// Hidden width of each adapter (`down_proj` output).
    #[serde(default = "default_bottleneck")]
    pub bottleneck: usize,
    /// 1 (one adapter, no router parameters) or 2 (two adapters mixed by `router_ratio1/2`).
    pub num_adapters: usize,
}

impl AdapterConfig {
    pub fn validate(&self) -> crate::rules::Check {
        use crate::rules::{all_positive, in_range};
        in_range("num_adapters", self.num_adapters, 1, 2)?;
        all_positive(&[("d_model", self.d_model), ("bottleneck", self.bottleneck)])
    }
}

/// `down_proj -> ReLU -> up_proj`, times a learnable scalar `scale`. No LayerNorm, dropout 0
/// (the upstream defaults LION uses).
///
/// Init ("lora" in upstream): `down_proj.weight` kaiming-uniform with a = sqrt(5), i.e.
/// U(-1/sqrt(d), 1/sqrt(d)); `up_proj.weight` and both biases zero; `scale` one. An adapter at init
/// therefore adds exactly zero.
#[derive(Debug, Clone)]
pub struct Adapter {
    down_proj: Linear,
    up_proj: Linear,
    scale: Tensor,
}

impl Adapter {
    /// Keys `down_proj.{weight,bias}`, `up_proj.{weight,bias}`, `scale`.
    pub fn new(cfg: &AdapterConfig, vb: VarBuilder) -> Result<Self> {
        let (d, r) = (cfg.d_model, cfg.bottleneck);
        let bound = 1.0 / (d as f64).sqrt();
        let down_w = vb.pp("down_proj").get_with_hints(
            (r, d),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let down_b = vb
            .pp("down_proj")
            .get_with_hints(r, "bias", Init::Const(0.))?;
        let up_w = vb
            .pp("up_proj")
            .get_with_hints((d, r), "weight", Init::Const(0.))?;
        let up_b = vb
            .pp("up_proj")
            .get_with_hints(d, "bias", Init::Const(0.))?;
        let scale = vb.get_with_hints(1, "scale", Init::Const(1.))?;
        Ok(Self {
            down_proj: Linear::new(down_w, Some(down_b)),
            up_proj: Linear::new(up_w, Some(up_b)),
            scale,
        })
    }

    /// xs: (b, t, d) -> (b, t, d)
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = self.down_proj.forward(xs)?.relu()?;
        self.up_proj.forward(&h)?.broadcast_mul(&self.scale)
    }
}

/// The adapters of one FFN and, with two of them, the per-channel router:
/// `A0(h) * router_ratio1[route] + A1(h) * router_ratio2[route]` (a static gate per task; not
/// token-conditioned, no softmax). With one adapter: `A0(h)`.
///
/// Router init: `router_ratio1 = [[1...], [0...]]`, `router_ratio2 = [[0...], [1...]]`, so at init
/// the region-level route uses only adapter 0 and the image-level route only adapter 1.
#[derive(Debug, Clone)]
pub struct AdapterRouter {
    adapters: Vec<Adapter>,
    /// Per route, the fused operands of [`AdapterRouter::forward`], made on first use when no
    /// parameter is a `Var` and the model was not built over live parameters
    /// ([`with_live_parameters`]), so decoding does not re-stack and re-scale the weights at
    /// every step and layer.
    fused: [OnceLock<Fused>; 2],
    /// Whether `fused` may be used (false: built inside [`with_live_parameters`]).
    keep_fused: bool,
    /// `(router_ratio1, router_ratio2)`, each (2, d); None with one adapter.
    router: Option<(Tensor, Tensor)>,
}

impl AdapterRouter {
    /// Keys `adapters.{i}.*`, `router_ratio1`, `router_ratio2` (the latter only with 2 adapters).
    pub fn new(cfg: &AdapterConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let adapters = (0..cfg.num_adapters)
            .map(|i| Adapter::new(cfg, vb.pp(format!("adapters.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let router = if cfg.num_adapters > 1 {
            let d = cfg.d_model;
            let dev = vb.device();
            let ones = Tensor::ones((1, d), vb.dtype(), dev)?;
            let zeros = Tensor::zeros((1, d), vb.dtype(), dev)?;
            let r1 = Tensor::cat(&[&ones, &zeros], 0)?;
            let r2 = Tensor::cat(&[&zeros, &ones], 0)?;
            Some((
                get_or_init(&vb, "router_ratio1", r1)?,
                get_or_init(&vb, "router_ratio2", r2)?,
            ))
        } else {
            None
        };
        Ok(Self {
            adapters,
            router,
            fused: Default::default(),
            keep_fused: !LIVE.with(|l| l.get()),
        })
    }

    /// xs: (b, t, d) -> (b, t, d), in xs' dtype (computed in the parameters' dtype).
    ///
    /// Computed as two GEMMs: the adapters' down projections stacked (`relu(x [D0; D1]^T + b)`),
    /// and their up projections with `scale * router[route]` folded into the weight's rows
    /// (`h [c0 U0, c1 U1]^T + (c0 u0 + c1 u1)`), the same function as
    /// `A0(x) * r1[route] + A1(x) * r2[route]` with a few passes over the activations instead of
    /// a dozen. Differentiable in every parameter. [`AdapterRouter::forward_unfused`] is the plain
    /// composition (tests compare the two).
    pub fn forward(&self, xs: &Tensor, route: Route) -> Result<Tensor> {
        let dtype = self.adapters[0].scale.dtype();
        let x = xs.to_dtype(dtype)?;
        let d = *x.dims().last().unwrap_or(&0);
        let m = x.elem_count() / d.max(1);
        let x2 = x.reshape((m, d))?;
        let made;
        let f = match self.fused[route.index()].get() {
            Some(f) => f,
            None if !self.keep_fused || self.trainable() => {
                made = self.fuse(route, d)?;
                &made
            }
            None => {
                let mut f = self.fuse(route, d)?;
                // the stacked down projections are the same for both routes: kept once
                if let Some(other) = self.fused[1 - route.index()].get() {
                    (f.dw, f.db) = (other.dw.clone(), other.db.clone());
                }
                self.fused[route.index()].get_or_init(|| f)
            }
        };
        let Fused { dw, db, uw, ub } = f;
        let h = crate::sgemm::bmm(&x2, &dw.t()?)?
            .broadcast_add(db)?
            .relu()?;
        let out = crate::sgemm::bmm(&h, &uw.t()?)?.broadcast_add(ub)?;
        out.reshape(x.shape())?.to_dtype(xs.dtype())
    }

    /// Whether any parameter is a `Var` (training: fused operands are made at every call, so
    /// gradients reach the parameters).
    fn trainable(&self) -> bool {
        let router = self.router.iter().flat_map(|(a, b)| [a, b]);
        let params = self.adapters.iter().flat_map(|a| {
            [
                a.down_proj.weight(),
                a.down_proj.bias(),
                a.up_proj.weight(),
                a.up_proj.bias(),
            ]
            .into_iter()
            .flatten()
            .chain([&a.scale])
        });
        params.chain(router).any(|t| t.is_variable())
    }

    /// The operands of [`AdapterRouter::forward`] for `route` (see there).
    fn fuse(&self, route: Route, d: usize) -> Result<Fused> {
        // per adapter: (down W (r, d), down b (r,), up W scaled (d, r), up b scaled (d,))
        let mut downs_w = Vec::with_capacity(2);
        let mut downs_b = Vec::with_capacity(2);
        let mut ups_w = Vec::with_capacity(2);
        let mut up_b: Option<Tensor> = None;
        for (i, a) in self.adapters.iter().enumerate() {
            // c: (d,) output-channel factor = scale * router row (or scale alone)
            let c = match &self.router {
                None => a.scale.broadcast_as(d)?,
                Some((r1, r2)) => {
                    let r = if i == 0 { r1 } else { r2 };
                    r.get(route.index())?.broadcast_mul(&a.scale)?
                }
            };
            downs_w.push(dense(&a.down_proj)?.clone());
            downs_b.push(a.down_proj.bias().expect("adapters have biases").clone());
            ups_w.push(dense(&a.up_proj)?.broadcast_mul(&c.unsqueeze(1)?)?);
            let b = (a.up_proj.bias().expect("adapters have biases") * &c)?;
            up_b = Some(match up_b {
                None => b,
                Some(acc) => (acc + b)?,
            });
        }
        let (dw, db, uw) = if self.adapters.len() == 1 {
            (downs_w.remove(0), downs_b.remove(0), ups_w.remove(0))
        } else {
            (
                Tensor::cat(&downs_w, 0)?,
                Tensor::cat(&downs_b, 0)?,
                Tensor::cat(&ups_w, 1)?,
            )
        };
        Ok(Fused {
            dw,
            db,
            uw,
            ub: up_b.expect("at least one adapter"),
        })
    }

    /// The plain composition `A0(x) * r1[route] + A1(x) * r2[route]` (reference for tests).
    /// xs: (b, t, d) -> (b, t, d).
    pub fn forward_unfused(&self, xs: &Tensor, route: Route) -> Result<Tensor> {
        let dtype = self.adapters[0].scale.dtype();
        let x = xs.to_dtype(dtype)?;
        let out1 = self.adapters[0].forward(&x)?;
        let out = match &self.router {
            None => out1,
            Some((r1, r2)) => {
                let out2 = self.adapters[1].forward(&x)?;
                let i = route.index();
                (out1.broadcast_mul(&r1.get(i)?)? + out2.broadcast_mul(&r2.get(i)?)?)?
            }
        };
        out.to_dtype(xs.dtype())
    }

    pub fn num_adapters(&self) -> usize {
        self.adapters.len()
    }
}

thread_local! {
    static LIVE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (a model's construction) with its adapters' parameters marked live: plain tensors
/// that share a training `Var`'s storage and so change under the model
/// ([`crate::pipeline::LionPipeline::inference_model`]). Such adapters fuse their operands at
/// every call instead of keeping them. The previous setting comes back afterwards.
pub fn with_live_parameters<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIVE.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIVE.with(|l| l.replace(true)));
    f()
}

/// [`AdapterRouter::forward`]'s operands for one route: the down projections stacked
/// (`dw` (n * bottleneck, d), `db`), the up projections with `scale * router[route]` folded into
/// their rows (`uw` (d, n * bottleneck)) and the folded up bias `ub` (d,).
#[derive(Debug, Clone)]
struct Fused {
    dw: Tensor,
    db: Tensor,
    uw: Tensor,
    ub: Tensor,
}

/// `vb.get` with a tensor-valued initialisation (the router's rows are not a constant). When a
/// checkpoint has the key, its value is used; otherwise the backend's zero-initialised tensor
/// (a `Var` when the key is trainable) is overwritten in place with `init`.
fn get_or_init(vb: &VarBuilder, name: &str, init: Tensor) -> Result<Tensor> {
    let in_checkpoint = vb.contains_tensor(name);
    let t = vb.get_with_hints(init.shape(), name, Init::Const(0.))?;
    if in_checkpoint {
        Ok(t)
    } else if t.is_variable() {
        t.slice_set(&init, 0, 0)?;
        Ok(t)
    } else {
        Ok(init)
    }
}

/// An adapter projection's weight (adapters are never quantized).
fn dense(l: &Linear) -> Result<&Tensor> {
    l.weight()
        .ok_or_else(|| candle_core::Error::msg("adapter weights are never quantized"))
}
