//! What the CPU can do, and which kernels run on it: the one place that detects features and
//! picks the kernels ([`kernels`]), for the start-up log line, the `lion bench` header and
//! `lion doctor`.
//!
//! Detection runs once (runtime CPUID through `is_x86_feature_detected!`; AMX through CPUID leaf
//! 7 and the OS's XCR0 tile state, which the standard library does not detect on stable). The
//! kernels themselves check the same cached flags before calling `#[target_feature]` code, so a
//! binary built for plain x86-64 runs everywhere and uses what the machine has. Other
//! architectures take the portable paths.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// The CPU features the kernels care about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512vl: bool,
    /// AVX-512 DQ (64-bit lane multiplies: the dropout mask's hash).
    pub avx512dq: bool,
    /// `vdpbf16ps`: bf16 pair dot products with f32 accumulation.
    pub avx512bf16: bool,
    pub avx512vnni: bool,
    /// AMX tiles, as CPUID reports them (`amx_os` says whether the OS enabled the tile state).
    pub amx_tile: bool,
    pub amx_bf16: bool,
    pub amx_int8: bool,
    /// XCR0 has the tile config and data state (bits 17, 18) enabled.
    pub amx_os: bool,
    /// The CPUID vendor is GenuineIntel (kernel choices measured per vendor, see [`Bf16Gemm`]).
    pub intel: bool,
}

impl Features {
    /// AVX2 and FMA: the 256-bit f32 kernels.
    pub fn avx2_fma(&self) -> bool {
        self.avx2 && self.fma
    }

    /// AVX-512 F/BW/VL: the 512-bit f32 kernels.
    pub fn avx512(&self) -> bool {
        self.avx512f && self.avx512bw && self.avx512vl
    }
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Features {
    use std::arch::x86_64::__cpuid_count;
    let leaf7 = __cpuid_count(7, 0);
    let bit = |r: u32, b: u32| r >> b & 1 == 1;
    let amx_tile = bit(leaf7.edx, 24);
    let amx_os = amx_tile && std::is_x86_feature_detected!("xsave") && {
        // SAFETY: XGETBV with ECX = 0 is available when the OS enabled XSAVE (OSXSAVE, which
        // `xsave` detection implies in std's check) and reads XCR0 only.
        let xcr0 = unsafe { xgetbv0() };
        xcr0 >> 17 & 0b11 == 0b11
    };
    Features {
        avx2: std::is_x86_feature_detected!("avx2"),
        fma: std::is_x86_feature_detected!("fma"),
        avx512f: std::is_x86_feature_detected!("avx512f"),
        avx512bw: std::is_x86_feature_detected!("avx512bw"),
        avx512vl: std::is_x86_feature_detected!("avx512vl"),
        avx512dq: std::is_x86_feature_detected!("avx512dq"),
        avx512bf16: std::is_x86_feature_detected!("avx512bf16"),
        avx512vnni: std::is_x86_feature_detected!("avx512vnni"),
        amx_tile,
        amx_bf16: bit(leaf7.edx, 22),
        amx_int8: bit(leaf7.edx, 25),
        amx_os,
        intel: {
            let v = std::arch::x86_64::__cpuid(0);
            // "GenuineIntel" is ebx, edx, ecx
            (v.ebx, v.edx, v.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
        },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    std::arch::x86_64::_xgetbv(0)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Features {
    Features::default()
}

/// The machine's features, detected once.
pub fn features() -> &'static Features {
    static F: OnceLock<Features> = OnceLock::new();
    F.get_or_init(|| {
        let f = detect();
        // LION_CPU=portable|avx2 caps what the kernels may use (testing the fallbacks on a
        // machine that has more); anything else is ignored with a warning.
        match std::env::var("LION_CPU").ok().as_deref() {
            None | Some("") | Some("native") => f,
            Some("avx2") => Features {
                avx2: f.avx2,
                fma: f.fma,
                ..Features::default()
            },
            Some("portable") => Features::default(),
            Some(other) => {
                tracing::warn!("LION_CPU={other} is not native, avx2 or portable: ignored");
                f
            }
        }
    })
}

/// Which f32 kernel family runs the skinny (decode) matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum F32Kernel {
    Avx512,
    Avx2Fma,
    Portable,
}

/// Which kernel runs f32 GEMMs of more than [`crate::skinny::MAX_ROWS`] rows in the linear
/// layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum F32Gemm {
    /// [`crate::sgemm`]: 12 x 32 register tiles of 512-bit FMAs.
    Avx512,
    /// [`crate::sgemm`] on AVX2 + FMA: the same panels and sums (the same bits as `Avx512`), each
    /// 12 x 32 tile as four 6 x 16 blocks of 256-bit FMAs.
    Avx2,
    /// The `gemm` crate behind candle, with its AVX2/FMA kernels.
    GemmCrateAvx2,
    /// The `gemm` crate's portable kernels.
    GemmCratePortable,
}

/// How a bf16-weight matmul of [`crate::bf16::WIDEN_MIN_ROWS`] rows or more runs where the CPU has
/// AVX512-BF16 (fewer rows always take the `vdpbf16ps` kernel: they stream the weight, and half
/// the bytes is what counts there).
///
/// Measured on the model's shapes (`examples/gemm_shapes.rs`, 2 cores, 2026-12-05): on Intel
/// Xeon (Emerald Rapids) the `vdpbf16ps` kernel ran 137-150 GFLOP/s at 257-2048 rows against
/// 230-259 for the f32 AVX-512 GEMM (PyTorch's bf16 oneDNN GEMM there: 163-169, its f32 270-303):
/// `vdpbf16ps` does not outrun two 512-bit FMA ports on those cores. On AMD Zen 4 the same kernel
/// reached 300-320 GFLOP/s at those shapes (2026-12-04) against 185 for the `gemm` crate's f32
/// 2048^3 (the AVX-512 f32 GEMM was not measured there), so AMD keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bf16Gemm {
    /// The `vdpbf16ps` dot-product kernel ([`crate::bf16`]): `x` rounded to bf16.
    Dot,
    /// The f32 AVX-512 GEMM with the weight widened while its panels are packed
    /// ([`crate::sgemm::matmul_wt_bf16`]): `x` stays f32, the weight stays bf16 in memory.
    WidenF32,
}

/// Which kernel runs a matmul against bf16 weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bf16Kernel {
    /// `vdpbf16ps` over bf16 pairs, f32 accumulation.
    Avx512Bf16,
    /// The weight widened to f32 per call, then the f32 path (no native bf16 on this CPU).
    Widen,
}

/// The precision of the linear layers' weights (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDtype {
    F32,
    Bf16,
}

impl WeightDtype {
    /// `f32`, `bf16` or `auto` (bf16 where the CPU has native bf16 dot products, else f32).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "f32" => Some(Self::F32),
            "bf16" => Some(Self::Bf16),
            "auto" => Some(kernels().auto_dtype),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// Weight-only quantisation of the big frozen linear layers (`--quantize`): GGML's q8_0 and
/// q4_0 schemes, and q4k (K-quants' asymmetric 4-bit blocks), with our kernels
/// ([`crate::quant`]); activations stay f32. Embeddings, norms, the Q-Former and the LM head stay
/// in `--dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quantize {
    /// 8-bit, one scale per 32 weights (1.125 bytes per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit, one scale per 32 weights (0.625 bytes per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit with a scale and a minimum per 32 weights, both fitted by least squares (0.75
    /// bytes per weight), for every layer but the T5's `v` and `wo`, which stay q8_0
    /// ([`crate::linear::Quantizable::Sensitive`]; llama.cpp's Q4_K_M mix).
    #[serde(rename = "q4k")]
    Q4K,
}

impl Quantize {
    /// Every format, as `--quantize` names them in [`Self::NAMES`].
    pub const ALL: [Self; 3] = [Self::Q8_0, Self::Q4_0, Self::Q4K];

    /// The accepted `--quantize` values, for error messages.
    pub const NAMES: &'static str = "q8_0, q4_0 or q4k";

    /// `q8_0`, `q4_0` or `q4k`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == s)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4k",
        }
    }

    /// Bytes per weight of the format as stored (f32 block scales included; q4k: of its 4-bit
    /// layers).
    pub fn bytes_per_weight(self) -> f64 {
        match self {
            Self::Q8_0 => 1.125,
            Self::Q4_0 => 0.625,
            Self::Q4K => 0.75,
        }
    }

    /// Bytes per weight of a whole model in this format, for estimates: [`Self::bytes_per_weight`],
    /// except q4k, whose 8-bit layers (the T5's `v` and `wo`, about 30% of Flan-T5's block
    /// weights) are counted as if they were 30% of all.
    pub fn mean_bytes_per_weight(self) -> f64 {
        match self {
            Self::Q4K => 0.7 * self.bytes_per_weight() + 0.3 * Self::Q8_0.bytes_per_weight(),
            q => q.bytes_per_weight(),
        }
    }
}

/// The kernels picked for this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Kernels {
    /// Skinny f32 matmul (decoding, up to [`crate::skinny::MAX_ROWS`] rows).
    pub f32_skinny: F32Kernel,
    /// f32 GEMM of the linear layers (other matmuls, e.g. attention scores, stay on candle's).
    pub f32_gemm: F32Gemm,
    /// Matmul against bf16 weights.
    pub bf16: Bf16Kernel,
    /// Where `bf16` is native: the kernel for many rows (`LION_BF16_GEMM=dot|widen` overrides).
    pub bf16_gemm: Bf16Gemm,
    /// What `--dtype auto` means here.
    pub auto_dtype: WeightDtype,
}

/// Picks the kernels for `f` (a pure function, so tests can ask about other machines).
pub fn pick(f: &Features) -> Kernels {
    let native = f.avx512() && f.avx512bf16;
    Kernels {
        f32_skinny: if f.avx512() {
            F32Kernel::Avx512
        } else if f.avx2_fma() {
            F32Kernel::Avx2Fma
        } else {
            F32Kernel::Portable
        },
        f32_gemm: if f.avx512f {
            F32Gemm::Avx512
        } else if f.avx2_fma() {
            F32Gemm::Avx2
        } else {
            F32Gemm::GemmCratePortable
        },
        bf16: if native {
            Bf16Kernel::Avx512Bf16
        } else {
            Bf16Kernel::Widen
        },
        bf16_gemm: if native && f.avx512f && f.intel {
            Bf16Gemm::WidenF32
        } else {
            Bf16Gemm::Dot
        },
        auto_dtype: if native {
            WeightDtype::Bf16
        } else {
            WeightDtype::F32
        },
    }
}

/// The kernels for this machine, picked once.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let mut k = pick(features());
        // LION_F32_GEMM=gemm-crate keeps the linear layers' f32 GEMM on the `gemm` crate where
        // `sgemm` (AVX-512 or AVX2) would run, and nothing else changes: the bits of earlier
        // runs (the shipped tagger and backbone were trained so).
        match std::env::var("LION_F32_GEMM").ok().as_deref() {
            None | Some("") | Some("native") => {}
            Some("gemm-crate") => {
                if matches!(k.f32_gemm, F32Gemm::Avx512 | F32Gemm::Avx2) {
                    k.f32_gemm = F32Gemm::GemmCrateAvx2;
                }
            }
            Some(other) => {
                tracing::warn!("LION_F32_GEMM={other} is not native or gemm-crate: ignored")
            }
        }
        match std::env::var("LION_BF16_GEMM").ok().as_deref() {
            None | Some("") | Some("native") => {}
            Some("dot") => k.bf16_gemm = Bf16Gemm::Dot,
            // the widened path needs the AVX-512 f32 GEMM
            Some("widen") if k.f32_gemm == F32Gemm::Avx512 => k.bf16_gemm = Bf16Gemm::WidenF32,
            Some(other) => tracing::warn!(
                "LION_BF16_GEMM={other} is not native, dot or widen (widen needs the AVX-512 f32 GEMM): ignored"
            ),
        }
        // the widened path runs on the f32 GEMM: without it (LION_F32_GEMM=gemm-crate) the
        // `vdpbf16ps` kernel stays
        if k.f32_gemm != F32Gemm::Avx512 {
            k.bf16_gemm = Bf16Gemm::Dot;
        }
        k
    })
}

/// The `lion doctor` report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub arch: &'static str,
    pub model_name: Option<String>,
    pub logical_cpus: usize,
    pub features: Features,
    pub kernels: Kernels,
    /// Notes on what the choice leaves unused (e.g. AMX without a tile kernel).
    pub notes: Vec<String>,
}

/// What this machine has and what runs on it.
pub fn report() -> Report {
    let f = *features();
    let k = *kernels();
    let mut notes = vec![];
    if f.amx_bf16 && f.amx_tile {
        notes.push(format!(
            "AMX-BF16 present (OS tile state {}): no AMX tile kernel yet, bf16 runs on {}",
            if f.amx_os { "enabled" } else { "disabled" },
            if k.bf16 == Bf16Kernel::Avx512Bf16 {
                "AVX512-BF16"
            } else {
                "the widening path"
            }
        ));
    }
    if k.bf16 == Bf16Kernel::Widen {
        notes.push("no native bf16 dot products: --dtype auto means f32".into());
    }
    if k.bf16 == Bf16Kernel::Avx512Bf16 && k.bf16_gemm == Bf16Gemm::WidenF32 {
        notes.push(
            "bf16 weights: products of 32 rows or more run the f32 AVX-512 GEMM on weights widened \
             while packed (faster than vdpbf16ps on this vendor's cores; LION_BF16_GEMM=dot \
             overrides)"
                .into(),
        );
    }
    Report {
        arch: std::env::consts::ARCH,
        model_name: model_name(),
        logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        features: f,
        kernels: k,
        notes,
    }
}

/// One line for logs and the bench header, e.g.
/// `avx2+fma avx512 avx512bf16 | skinny avx512, gemm AVX2/FMA, bf16 avx512-bf16`.
pub fn summary() -> String {
    let f = features();
    let k = kernels();
    let mut have = vec![];
    for (on, name) in [
        (f.avx2_fma(), "avx2+fma"),
        (f.avx512(), "avx512"),
        (f.avx512bf16, "avx512bf16"),
        (f.avx512vnni, "vnni"),
        (f.amx_bf16 && f.amx_os, "amx-bf16"),
        (f.amx_int8 && f.amx_os, "amx-int8"),
    ] {
        if on {
            have.push(name);
        }
    }
    if have.is_empty() {
        have.push("no SIMD kernels");
    }
    format!(
        "{} | skinny {:?}, gemm {:?}, bf16 {:?}{}, auto dtype {}",
        have.join(" "),
        k.f32_skinny,
        k.f32_gemm,
        k.bf16,
        match (k.bf16, k.bf16_gemm) {
            (Bf16Kernel::Avx512Bf16, Bf16Gemm::WidenF32) => " (many rows: WidenF32)",
            _ => "",
        },
        k.auto_dtype.name()
    )
}

/// Logs [`summary`] once (commands call it at start-up).
pub fn log_choice() {
    tracing::info!(
        cpu = model_name().as_deref().unwrap_or("?"),
        "kernels: {}",
        summary()
    );
}

fn model_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_follows_features() {
        let none = Features::default();
        assert_eq!(pick(&none).f32_skinny, F32Kernel::Portable);
        assert_eq!(pick(&none).auto_dtype, WeightDtype::F32);
        let avx2 = Features {
            avx2: true,
            fma: true,
            ..none
        };
        assert_eq!(pick(&avx2).f32_skinny, F32Kernel::Avx2Fma);
        assert_eq!(pick(&avx2).bf16, Bf16Kernel::Widen);
        let zen4 = Features {
            avx512f: true,
            avx512bw: true,
            avx512vl: true,
            avx512bf16: true,
            ..avx2
        };
        assert_eq!(pick(&zen4).f32_skinny, F32Kernel::Avx512);
        assert_eq!(pick(&zen4).bf16, Bf16Kernel::Avx512Bf16);
        assert_eq!(pick(&zen4).auto_dtype, WeightDtype::Bf16);
        assert_eq!(pick(&zen4).bf16_gemm, Bf16Gemm::Dot);
        let xeon = Features {
            intel: true,
            ..zen4
        };
        assert_eq!(pick(&xeon).bf16, Bf16Kernel::Avx512Bf16);
        assert_eq!(pick(&xeon).bf16_gemm, Bf16Gemm::WidenF32);
        let xeon_no_bf16 = Features {
            avx512bf16: false,
            ..xeon
        };
        assert_eq!(pick(&xeon_no_bf16).bf16_gemm, Bf16Gemm::Dot);
    }
}
