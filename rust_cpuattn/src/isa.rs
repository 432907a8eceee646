//! Runtime choice of the SIMD path. Never depends on build flags: the same binary runs the best
//! path the CPU has, or the one forced by `RUST_CPUATTN_ISA`.

use std::sync::OnceLock;

use crate::error::{bail, Error, Result};

/// Environment variable forcing a path: `scalar`, `avx2`, `avx512` or `avx512bf16`.
pub const ISA_ENV: &str = "RUST_CPUATTN_ISA";

/// A kernel path, from the most to the least capable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F with AVX512_BF16 dot products for bf16 keys.
    Avx512Bf16,
    /// AVX-512F (f16 keys via the F16C-style conversion, bf16 by a shift).
    Avx512,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// Portable Rust.
    Scalar,
}

impl Isa {
    pub const ALL: [Isa; 4] = [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Scalar];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Scalar => "scalar",
        }
    }

    pub fn from_name(name: &str) -> Result<Isa> {
        Isa::ALL.into_iter().find(|isa| isa.name() == name.trim().to_ascii_lowercase()).ok_or_else(|| {
            Error::new(format!("unknown ISA {name:?} (expected one of scalar, avx2, avx512, avx512bf16)"))
        })
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx512 = || std::arch::is_x86_feature_detected!("avx512f");
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                        && std::arch::is_x86_feature_detected!("f16c")
                }
                Isa::Avx512 => avx512(),
                Isa::Avx512Bf16 => avx512() && std::arch::is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// Every path this CPU supports, best first.
    ///
    /// NOTE: on Intel CPUs `vdpbf16ps` issues at half the rate of an FMA (measured on a
    /// Sapphire Rapids-class core), so bf16 dot products are slower than widening K once in
    /// registers for all heads of a group and using FMAs: there `avx512` ranks above
    /// `avx512bf16`. Elsewhere (Zen 4 runs it at the FMA rate) the dot products rank first.
    pub fn supported() -> Vec<Isa> {
        let mut isas: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| isa.is_supported()).collect();
        if is_intel() && isas.starts_with(&[Isa::Avx512Bf16, Isa::Avx512]) {
            isas.swap(0, 1);
        }
        isas
    }

    /// The best path this CPU supports.
    pub fn detect() -> Isa {
        Isa::supported().first().copied().unwrap_or(Isa::Scalar)
    }

    /// The path for this process: `RUST_CPUATTN_ISA` when set (an error if unknown or not
    /// supported by this CPU), else the best one. Read once.
    pub fn selected() -> Result<Isa> {
        static SELECTED: OnceLock<Result<Isa>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var(ISA_ENV) {
                Ok(name) if !name.trim().is_empty() => {
                    let isa = Isa::from_name(&name)?;
                    if !isa.is_supported() {
                        bail!("{ISA_ENV}={name} but this CPU does not support it (supported: {:?})", Isa::supported());
                    }
                    Ok(isa)
                }
                _ => Ok(Isa::detect()),
            })
            .clone()
    }
}

/// Whether the CPU vendor is Intel.
fn is_intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let r = std::arch::x86_64::__cpuid(0);
        // "GenuineIntel" in ebx, edx, ecx.
        (r.ebx, r.edx, r.ecx) == (0x756e_6547, 0x4965_6e69, 0x6c65_746e)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
