//! [`Cpu`]: the CPU backend's settings — which kernel tier, which matmul precision — fixed when
//! the backend is made and passed to every op, never process-wide.

use crate::kernels::{Isa, MatmulPrecision};

/// The CPU backend: its kernel tier and matmul precision. Every op of [`crate::ops`] takes one,
/// and so runs as this backend was set up; two backends with different settings can run side
/// by side in one process.
///
/// The tier is checked when set: one the CPU lacks becomes [`Isa::Scalar`], so the kernels'
/// `unsafe` dispatch on [`Cpu::isa`] is sound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpu {
    isa: Isa,
    precision: MatmulPrecision,
}

impl Default for Cpu {
    /// [`Isa::best`], [`MatmulPrecision::Int8`].
    fn default() -> Self {
        Cpu {
            isa: Isa::best(),
            precision: MatmulPrecision::Int8,
        }
    }
}

impl Cpu {
    /// The default settings with the environment's choices applied: `QINFER_ISA` (`avx512`,
    /// `avx2`, `avx2-novnni`, `scalar`; another value is ignored) and `QINFER_MATMUL=exact`.
    /// Read here, once per backend made, never by a kernel.
    pub fn from_env() -> Self {
        let mut cpu = Cpu::default();
        if let Some(isa) = std::env::var("QINFER_ISA")
            .ok()
            .and_then(|v| Isa::named(&v))
        {
            cpu = cpu.with_isa(isa);
        }
        if std::env::var("QINFER_MATMUL").is_ok_and(|v| v.eq_ignore_ascii_case("exact")) {
            cpu.precision = MatmulPrecision::Exact;
        }
        cpu
    }

    /// These settings at tier `isa` ([`Isa::Scalar`] if the CPU cannot run it).
    pub fn with_isa(self, isa: Isa) -> Self {
        Cpu {
            isa: if isa.supported() { isa } else { Isa::Scalar },
            ..self
        }
    }

    /// These settings at matmul precision `precision`.
    pub fn with_precision(self, precision: MatmulPrecision) -> Self {
        Cpu { precision, ..self }
    }

    /// The kernel tier (one this CPU runs).
    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn precision(&self) -> MatmulPrecision {
        self.precision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsupported_tier_falls_back_to_the_reference_tier() {
        for isa in [Isa::Avx512, Isa::Avx2 { vnni: true }, Isa::Scalar] {
            let got = Cpu::default().with_isa(isa).isa();
            assert_eq!(got, if isa.supported() { isa } else { Isa::Scalar });
        }
        assert!(Isa::best().supported());
    }

    #[test]
    fn two_backends_keep_their_own_settings() {
        let exact = Cpu::default().with_precision(MatmulPrecision::Exact);
        let int8 = Cpu::default();
        assert_eq!(exact.precision(), MatmulPrecision::Exact);
        assert_eq!(int8.precision(), MatmulPrecision::Int8);
    }
}
