//! The instruction-set levels of the kernels and their run-time detection: the one dispatch
//! table of the crate.
//!
//! The crate is compiled for the target's baseline (SSE2 on x86-64, no `-C target-cpu`). A hot
//! kernel is written once as an `#[inline(always)]` generic body and instantiated inside
//! `#[target_feature(enable = ...)]` functions, one per level it serves (`"avx2,fma"`; a subset of
//! `"avx512f,avx512bw,avx512dq,avx512vl,avx2,fma"`, plus `avx512vnni`), where LLVM vectorises it
//! with 256/512-bit registers; explicit intrinsics add what it does not find (register scans, fused
//! requantization, `vpdpbusd`). A kernel's entry point matches on the level once per call
//! (`*_with(isa, ...)`; the plain entry point uses [`Isa::detect`]) and runs that instance: no
//! dynamic dispatch inside the loops.

/// An instruction-set level of the hot kernels, ordered from the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// The compile target's baseline (SSE2 on x86-64), on every CPU; separate multiply and
    /// add in the float kernels (`f32::mul_add` without hardware FMA is a libm call).
    Portable,
    /// x86-64 AVX2 + FMA (Haswell and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/DQ/VL + AVX2 + FMA: Skylake-SP, Ice Lake, Zen 4 and later.
    Avx512,
    /// [`Isa::Avx512`] plus AVX-512 VNNI (`vpdpbusd`, u8 x i8 dot products of 4 into i32):
    /// Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and later. The int8 pointwise layers run
    /// as a VNNI GEMM; everything else as at [`Isa::Avx512`].
    Avx512Vnni,
}

impl Isa {
    /// The widest level this CPU supports (detected once, then cached). The environment
    /// variable `ASC_ISA` (`portable`, `avx2`, `avx512`, `avx512vnni`) caps it for every
    /// kernel, for benchmarks and debugging; other values are ignored.
    pub fn detect() -> Self {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let cap = match std::env::var("ASC_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") => Isa::Avx2,
                Ok("avx512") => Isa::Avx512,
                _ => Isa::Avx512Vnni,
            };
            [Isa::Avx512Vnni, Isa::Avx512, Isa::Avx2]
                .into_iter()
                .find(|i| *i <= cap && i.is_available())
                .unwrap_or(Isa::Portable)
        })
    }

    /// Short name (`portable`, `avx2`, `avx512`, `avx512vnni`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// True when this CPU can run kernels compiled for `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512dq")
                    && is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => Isa::Avx512.is_available() && is_x86_feature_detected!("avx512vnni"),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `self` if this CPU supports it (and `ASC_ISA` allows it), else the widest level below:
    /// what a `*_with(isa, ...)` entry point runs.
    pub fn or_supported(self) -> Self {
        self.min(Isa::detect())
    }
}

#[cfg(test)]
mod tests {
    use super::Isa;

    #[test]
    fn detection_is_ordered_and_capped() {
        let d = Isa::detect();
        assert!(d.is_available());
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni] {
            let s = isa.or_supported();
            assert!(s <= isa && s <= d && s.is_available(), "{isa:?} -> {s:?}");
            // A level implies the ones below it.
            if isa.is_available() {
                assert!(
                    [Isa::Portable, Isa::Avx2, Isa::Avx512]
                        .into_iter()
                        .filter(|l| *l < isa)
                        .all(Isa::is_available)
                );
            }
        }
    }
}
