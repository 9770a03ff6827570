//! The compute device a command runs on: `--device cpu|cuda[:N]`, parsed and validated in one
//! place ([`crate::rules::device`]) for the CLI, the server and the trainer.
//!
//! CUDA needs a build with the `cuda` feature (`scripts/build-cuda.sh`); a default build rejects
//! `cuda` when the flag is parsed, before anything is loaded. On a non-CPU device the fused CPU
//! kernels step aside for plain candle ops ([`crate::kernels::fused`]).

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::rules::Invalid;

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// Whether this build can run on CUDA GPUs (the `cuda` feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// The rule a `cuda` device breaks in a build without the `cuda` feature.
pub const NO_CUDA_BUILD: &str =
    "this build has no CUDA support; rebuild with --features cuda (scripts/build-cuda.sh)";

/// The highest CUDA ordinal accepted by the parser (a typo guard; the device itself is checked
/// when it is opened).
pub const MAX_CUDA_ORDINAL: usize = 63;

impl DeviceSpec {
    /// Parses `cpu`, `cuda` or `cuda:N` (case-insensitive, surrounding spaces ignored), whatever
    /// this build supports; [`crate::rules::device`] adds the build check.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let t = s.trim().to_ascii_lowercase();
        let bad = |rule: &str| Invalid::new("device", format!("{s:?}"), rule);
        match t.as_str() {
            "cpu" => return Ok(DeviceSpec::Cpu),
            "cuda" => return Ok(DeviceSpec::Cuda(0)),
            _ => {}
        }
        let Some(n) = t.strip_prefix("cuda:") else {
            return Err(bad("must be `cpu`, `cuda` or `cuda:N`"));
        };
        let n: usize = n
            .parse()
            .map_err(|_| bad("the CUDA ordinal after `cuda:` must be a whole number >= 0"))?;
        if n > MAX_CUDA_ORDINAL {
            return Err(bad(&format!(
                "the CUDA ordinal must be at most {MAX_CUDA_ORDINAL}"
            )));
        }
        Ok(DeviceSpec::Cuda(n))
    }

    pub fn is_cuda(self) -> bool {
        matches!(self, DeviceSpec::Cuda(_))
    }

    /// Opens the device. A CUDA device that is absent (no driver, no GPU, ordinal past the last
    /// GPU) is an error that names it.
    pub fn open(self) -> crate::Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => open_cuda(n),
        }
    }
}

/// Each CUDA ordinal is opened once per process: candle gives every `Device::new_cuda` its own
/// context and stream, and refuses to mix tensors of two of them (the pipeline, the tagger and
/// the embedder of one command must share the device).
#[cfg(feature = "cuda")]
fn open_cuda(n: usize) -> crate::Result<Device> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static OPEN: OnceLock<Mutex<HashMap<usize, Device>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(d) = open.get(&n) {
        return Ok(d.clone());
    }
    let d = Device::new_cuda(n).map_err(|e| {
        let fewer = match n {
            0 => String::new(),
            _ => format!(", or fewer than {} GPUs", n + 1),
        };
        crate::Error::Input(format!(
            "device cuda:{n} is not available (no NVIDIA driver or no GPU{fewer}): {e}"
        ))
    })?;
    open.insert(n, d.clone());
    Ok(d)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(n: usize) -> crate::Result<Device> {
    Err(crate::Error::Input(format!(
        "device cuda:{n}: {NO_CUDA_BUILD}"
    )))
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Invalid;

    /// [`crate::rules::device`]: the syntax and what this build supports.
    fn from_str(s: &str) -> Result<Self, Invalid> {
        crate::rules::device(s)
    }
}

/// The name of a candle device as `--device` spells it (`cpu`, `cuda:0`, `metal:0`).
pub fn name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spellings() {
        assert_eq!(DeviceSpec::parse("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse(" CPU ").unwrap(), DeviceSpec::Cpu);
        assert_eq!(DeviceSpec::parse("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(DeviceSpec::parse("cuda:3").unwrap(), DeviceSpec::Cuda(3));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        assert_eq!(DeviceSpec::Cpu.to_string(), "cpu");
    }

    #[test]
    fn rejects_bad_spellings_naming_the_value() {
        for s in [
            "", "tpu", "gpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1.5", "cuda:64", "cuda0", "cpu:0",
        ] {
            let e = DeviceSpec::parse(s).unwrap_err();
            assert_eq!(e.field, "device", "{s}");
            assert!(e.value.contains(&format!("{s:?}")), "{s}: {e}");
        }
    }

    #[test]
    fn cpu_opens_everywhere() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        assert_eq!(name(&Device::Cpu), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_in_a_cpu_build_says_to_rebuild() {
        let e = "cuda:1".parse::<DeviceSpec>().unwrap_err();
        assert_eq!(e.rule, NO_CUDA_BUILD);
        assert!(
            e.to_string().contains("rebuild with --features cuda"),
            "{e}"
        );
        let e = DeviceSpec::Cuda(1).open().unwrap_err().to_string();
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
    }

    /// A cuda build on a machine without a GPU (as the build machine): the error names the
    /// device. On a GPU machine ordinal 63 is still absent.
    #[cfg(feature = "cuda")]
    #[test]
    fn absent_cuda_device_is_named() {
        assert_eq!(
            "cuda:63".parse::<DeviceSpec>().unwrap(),
            DeviceSpec::Cuda(63)
        );
        let e = DeviceSpec::Cuda(63).open().unwrap_err().to_string();
        assert!(e.contains("cuda:63") && e.contains("not available"), "{e}");
    }
}
