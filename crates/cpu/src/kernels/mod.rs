//! Matrix-vector and matrix-matrix kernels behind [`crate::ops::matmul`], and the one place
//! that picks an instruction set.
//!
//! # Tiers
//! * `reference.rs` — scalar integer dot products (and `f32` dots for float weights): the
//!   specification every fast kernel is tested against.
//! * `avx512.rs` — AVX-512 F/BW/VL + VNNI kernels, chosen at run time by [`isa`] when the CPU
//!   has those features.
//! * `avx2.rs` — AVX2 + FMA + F16C kernels for CPUs without AVX-512 (most desktop Intel chips,
//!   AMD Zen 2/3), with AVX-VNNI (`vpdpbusd` on 256-bit registers) for the Q8_0 / Q4_0 byte
//!   products when the CPU has it. They cover the matmuls of Q8_0, Q4_0, Q4_K, Q5_K, Q6_K,
//!   IQ4_XS, F32, F16 and BF16 weights, the activation quantizers and the fused delta-rule
//!   decode step; everything else on this tier (Q5_0 / IQ4_NL matmuls, attention, the chunked
//!   delta rule, `vmath::exp`) runs the scalar code.
//! * `bf16.rs` — BF16 × BF16 dot products with AVX-512 BF16 (`vdpbf16ps`): row kernels and a
//!   cache-blocked GEMM for prefill that sums in the same order, used on top of the AVX-512
//!   tier when the CPU also has that extension (`has_avx512_bf16`).
//! * Machines with neither AVX-512 nor AVX2 run the reference tier (correct, slow).
//!
//! The tier is a setting of each [`crate::Cpu`] backend, fixed when it is made: by default
//! [`Isa::best`], the best tier the CPU has; `QINFER_ISA=avx2` (read by
//! [`crate::Cpu::from_env`]) picks the AVX2 tier (with AVX-VNNI if present), `avx2-novnni` the
//! AVX2 tier without AVX-VNNI, and `scalar` the reference tier; a tier the CPU lacks falls back
//! to the reference tier. Kernels take the tier as an argument; only a [`crate::Cpu`] (which
//! checks it) or a test that checked the features chooses it.
//!
//! # Precision ([`MatmulPrecision`])
//! By default (`Int8`), weights in the integer formats Q4_0, Q5_0, Q8_0, IQ4_NL (against
//! [`act::BlockQ8_0`] activations) and Q4_K, Q5_K, Q6_K, IQ4_XS (against [`act::BlockQ8K`])
//! are multiplied with activations quantized on the fly to 8 bits, as llama.cpp does: the
//! integer dot products are exact, the only extra error is the activation rounding (about
//! 0.4% of each block's largest activation). `Exact` widens every weight block to `f32` and
//! keeps `f32` activations, which reproduces transformers on the dequantized weights to `f32`
//! rounding; golden tests against transformers use it. BF16 weights by default meet
//! activations rounded once per matmul to BF16 (to nearest, ties to even: [`act::Bf16Acts`]),
//! as llama.cpp converts them; the products are exact in `f32` and summed in `f32`, so the only
//! extra error is the activation rounding (at most `2^-8` of each activation). This path needs
//! AVX-512 BF16 (`has_avx512_bf16`): an AVX-512 CPU without it keeps `f32` activations for
//! BF16 weights (the reference tier follows the default arithmetic). F32 and F16 weights
//! always use `f32` activations, and formats without an integer kernel (Q4_1, Q5_1, Q2_K,
//! Q3_K) always take the exact path.
//!
//! The precision is a setting of each [`crate::Cpu`] backend (`QINFER_MATMUL=exact` in the
//! environment for [`crate::Cpu::from_env`]), never process-wide.

/// `$go!(N)` for `N = $g`, a token count in `1..=MAX_TOKENS` (the kernels take it as a const
/// generic). Defined before the submodules, which use it too.
macro_rules! for_token_count {
    ($g:expr, $go:ident) => {
        match $g {
            1 => $go!(1),
            2 => $go!(2),
            3 => $go!(3),
            4 => $go!(4),
            5 => $go!(5),
            6 => $go!(6),
            7 => $go!(7),
            8 => $go!(8),
            n => unreachable!(
                "{n} tokens: kernels take 1..={}",
                $crate::kernels::MAX_TOKENS
            ),
        }
    };
}

pub mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod avx512;
mod bf16;
pub mod delta;
#[cfg(target_arch = "x86_64")]
mod gemm;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod rows16;
pub mod sgemm;
pub mod vmath;

use std::cell::RefCell;
use std::sync::OnceLock;

use qinfer_tensor::{DType, Mat, Weight};

use act::{Bf16Acts, QuantActs};

/// The instruction set the kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 F, BW, VL, DQ, VNNI with FMA and F16C.
    Avx512,
    /// AVX2 with FMA and F16C; `vnni`: use AVX-VNNI too (the CPU has it).
    Avx2 { vnni: bool },
    /// Portable scalar code (the reference tier).
    Scalar,
}

impl Isa {
    /// The best tier this CPU has (detected once: a fact about the machine, not a setting).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            if has_avx512() {
                Isa::Avx512
            } else if has_avx2() {
                Isa::Avx2 {
                    vnni: has_avx_vnni(),
                }
            } else {
                Isa::Scalar
            }
        })
    }

    /// The tier a `QINFER_ISA` value names (`avx512`, `avx2`, `avx2-novnni`, `scalar`; case
    /// ignored), or `None` for another name. `avx2` takes AVX-VNNI where the CPU has it.
    pub fn named(name: &str) -> Option<Isa> {
        match name.to_ascii_lowercase().as_str() {
            "avx512" => Some(Isa::Avx512),
            "avx2" => Some(Isa::Avx2 {
                vnni: has_avx_vnni(),
            }),
            "avx2-novnni" => Some(Isa::Avx2 { vnni: false }),
            "scalar" => Some(Isa::Scalar),
            _ => None,
        }
    }

    /// Whether this CPU can run the tier.
    pub fn supported(self) -> bool {
        match self {
            Isa::Avx512 => has_avx512(),
            Isa::Avx2 { vnni } => has_avx2() && (!vnni || has_avx_vnni()),
            Isa::Scalar => true,
        }
    }
}

pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) fn has_avx_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Every tier this CPU can run, the reference tier first (for equivalence tests).
#[cfg(test)]
pub(crate) fn tiers() -> Vec<Isa> {
    let mut v = vec![Isa::Scalar];
    if has_avx2() {
        v.push(Isa::Avx2 { vnni: false });
        if has_avx_vnni() {
            v.push(Isa::Avx2 { vnni: true });
        }
    }
    if has_avx512() {
        v.push(Isa::Avx512);
    }
    v
}

/// Whether the CPU has AVX-512 BF16 (`vdpbf16ps`) on top of [`Isa::Avx512`]'s features,
/// detected once.
pub(crate) fn has_avx512_bf16() -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    *BF16.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx512() && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether BF16 weights meet BF16 activations at `isa` under [`MatmulPrecision::Int8`]: in the
/// reference tier (the specification) and where `vdpbf16ps` makes it fast.
fn bf16_products(isa: Isa) -> bool {
    isa == Isa::Scalar || isa == Isa::Avx512 && has_avx512_bf16()
}

/// How quantized weights meet activations (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// Activations quantized to 8-bit blocks, integer dot products (llama.cpp's arithmetic).
    #[default]
    Int8,
    /// Weights widened to `f32`, `f32` activations (transformers on dequantized weights).
    Exact,
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Integer formats with a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IntFmt {
    Q8_0,
    Q4_0,
    Q5_0,
    Iq4Nl,
    Q4K,
    Q5K,
    Q6K,
    Iq4Xs,
}

impl IntFmt {
    fn of(dtype: DType) -> Option<Self> {
        Some(match dtype {
            DType::Q8_0 => IntFmt::Q8_0,
            DType::Q4_0 => IntFmt::Q4_0,
            DType::Q5_0 => IntFmt::Q5_0,
            DType::IQ4_NL => IntFmt::Iq4Nl,
            DType::Q4_K => IntFmt::Q4K,
            DType::Q5_K => IntFmt::Q5K,
            DType::Q6_K => IntFmt::Q6K,
            DType::IQ4_XS => IntFmt::Iq4Xs,
            _ => return None,
        })
    }

    fn k_quant(self) -> bool {
        matches!(
            self,
            IntFmt::Q4K | IntFmt::Q5K | IntFmt::Q6K | IntFmt::Iq4Xs
        )
    }
}

#[derive(Debug)]
enum Acts<'a> {
    /// `f32` activations against float weights, or widened blocks (`widen`).
    Float {
        x: &'a Mat,
        widen: bool,
    },
    Int {
        fmt: IntFmt,
        q: QuantActs,
    },
    /// Many activation rows against a format with an AVX-512 GEMM kernel (`gemm.rs`).
    #[cfg(target_arch = "x86_64")]
    Gemm(gemm::GemmActs),
    /// A few activation rows (Q8_K, natural order) against a format with a rows-in-lanes
    /// kernel (`rows16.rs`).
    #[cfg(target_arch = "x86_64")]
    Rows16 {
        fmt: IntFmt,
        q: QuantActs,
    },
    /// BF16 activations against BF16 weights.
    Bf16(Bf16Acts),
}

/// One matmul's prepared inputs: the weight, the activations in the form its kernel needs.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    w: &'a Weight,
    /// `w`'s bytes and row length, looked up once (kernels are called per row).
    bytes: &'a [u8],
    row_bytes: usize,
    acts: Acts<'a>,
    isa: Isa,
}

/// Most activation rows one kernel call handles (the weight row is unpacked once for them).
pub(crate) const MAX_TOKENS: usize = 8;

/// Most weight rows [`Plan::compute`] takes at a time for one token with the `*_x4` kernels:
/// four sequential streams of up to 2048 rows. Longer streams read faster (one thread, a
/// 71 MB Q8_0 matrix with rows of 1024: streams of 16 rows 20.7 GB/s, 64 rows 33.9, 512
/// rows 38.8, 2048 rows 38.4; one row after another, the old order, 29.3).
const X4_CHUNK: usize = 8192;

/// Fewest activation rows for which Q4_K/Q5_K/Q6_K rows go four at a time through
/// `avx512::q45_k_x4n` / `avx512::q6_k_x4n`, one row from each quarter of a chunk
/// ([`Plan::compute_k_x4n`]).
/// `cargo bench -p qinfer-cpu --bench kernels -- verify/Q4_K/65536x2048` (a 75 MB matrix
/// streamed from memory), three alternating rounds, GB/s at 2 / 3 / 4 / 5 tokens: per-row
/// kernels 15.0 / 10.7 / 10.4 / 7.4, 11.6 / 10.5 / 7.3 / 6.2, 10.5 / 10.1 / 7.5 / 6.5;
/// four rows in four streams 18.9 / 11.8 / 10.6 / 8.3, 16.4 / 10.6 / 8.7 / 6.3,
/// 15.8 / 11.5 / 10.9 / 9.2. One routed expert of the 35B-A3B (`-- expert`, in cache), 4
/// tokens, four alternating rounds: 230 / 221 / 242 / 184 µs → 157 / 211 / 185 / 211 µs.
/// (Four adjacent rows per call, the order before, were slower than the per-row kernels
/// below 6 tokens: 4 tokens 149 → 161 µs on that expert.) Q6_K (`-- verify/Q6_K`, 55 MB),
/// three rounds, 2 / 3 / 4 / 5 tokens: per-row 17.7 / 10.4 / 10.2 / 6.4, 13.0 / 8.7 / 8.2 /
/// 7.8, 12.9 / 11.6 / 7.6 / 7.8; four rows 13.7 / 17.1 / 12.3 / 9.1, 14.2 / 14.7 / 10.2 /
/// 8.6, 14.2 / 14.1 / 11.5 / 8.9.
const X4N_MIN_TOKENS: usize = 2;

/// Most weight rows one [`Plan::dot_rows`] call handles (Q8_0's rows-in-lanes kernel).
pub(crate) const MAX_ROWS: usize = 16;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(MAX_ROWS == avx512::X16_ROWS && MAX_ROWS >= bf16::ROWS);

/// One kernel call of [`Plan::compute_streams`]: chunk rows [`StreamCall::row`] against
/// activation rows `t0 .. t0 + g`.
#[cfg(target_arch = "x86_64")]
struct StreamCall {
    /// The chunk's first row.
    r: usize,
    /// Rows per quarter of the chunk.
    quarter: usize,
    /// The call's first row within each quarter.
    i: usize,
    t0: usize,
    g: usize,
    /// The chunk's rows (the stride of the result buffer).
    chunk: usize,
}

#[cfg(target_arch = "x86_64")]
impl StreamCall {
    /// Row `j` of quarter `s` of this call, relative to the chunk's first row.
    fn row(&self, s: usize, j: usize) -> usize {
        s * self.quarter + self.i + j
    }

    /// Where the result of chunk row `k` for activation row `t0 + i` goes in the buffer.
    fn at(&self, i: usize, k: usize) -> usize {
        (self.t0 + i) * self.chunk + k
    }
}

impl<'a> Plan<'a> {
    pub(crate) fn new(x: &'a Mat, w: &'a Weight, isa: Isa, precision: MatmulPrecision) -> Self {
        let fmt = IntFmt::of(w.dtype()).filter(|_| precision == MatmulPrecision::Int8);
        let acts = match fmt {
            Some(fmt) => 'int: {
                let mut q = if fmt.k_quant() {
                    QuantActs::q8_k(&x.data, x.rows, x.cols, isa)
                } else {
                    QuantActs::q8_0(&x.data, x.rows, x.cols, isa)
                };
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512 && rows16::takes(fmt, x.rows, w.bytes().len()) {
                    break 'int Acts::Rows16 { fmt, q };
                }
                #[cfg(target_arch = "x86_64")]
                if isa == Isa::Avx512
                    && x.rows >= gemm::MIN_ROWS
                    && let Some(g) = gemm::GemmFmt::of(fmt)
                {
                    break 'int Acts::Gemm(gemm::GemmActs::new(g, &q, x.rows, x.cols));
                }
                if isa == Isa::Avx512 && matches!(fmt, IntFmt::Q4K | IntFmt::Q5K) {
                    q.to_k4_order();
                }
                Acts::Int { fmt, q }
            }
            None if w.dtype() == DType::BF16
                && precision == MatmulPrecision::Int8
                && bf16_products(isa) =>
            {
                let lead = bf16::lead(w.bytes(), w.row_bytes());
                Acts::Bf16(Bf16Acts::new(&x.data, x.rows, x.cols, isa, lead))
            }
            None => Acts::Float {
                x,
                widen: w.dtype().is_quantized() || isa == Isa::Scalar && w.dtype() != DType::F32,
            },
        };
        Plan {
            w,
            bytes: w.bytes(),
            row_bytes: w.row_bytes(),
            acts,
            isa,
        }
    }

    /// `store(t, r, v)` with `v[i]` = row `r + i` of W · activation row `t`, covering every
    /// weight row in `rows` and every one of the `t` activation rows once: the GEMM kernel
    /// when the plan has one (the integer GEMM, or the BF16 GEMM for `bf16::TILE_TOKENS` rows
    /// or more, which gives the row kernel's bits), otherwise the row kernels, `ROW_TILE`
    /// weight rows at a time against groups of [`MAX_TOKENS`] activation rows (a weight row is
    /// unpacked once per group and read from L1 for the next groups).
    pub(crate) fn compute(
        &self,
        rows: std::ops::Range<usize>,
        t: usize,
        mut store: impl FnMut(usize, usize, &[f32]),
    ) {
        /// Weight rows processed together (they stay in L1/L2 while every group passes).
        const ROW_TILE: usize = 16;
        #[cfg(target_arch = "x86_64")]
        if let Acts::Gemm(a) = &self.acts {
            // SAFETY: GEMM plans are only made when `isa()` confirmed AVX-512.
            unsafe { gemm::gemm(a, rows, |r| self.row(r), store) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let Acts::Rows16 { fmt, q } = &self.acts {
            // SAFETY: these plans are only made when `isa()` confirmed AVX-512.
            unsafe { rows16::compute(*fmt, self.bytes, self.row_bytes, q, rows, store) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if let (Acts::Bf16(a), Isa::Avx512) = (&self.acts, self.isa)
            && t >= bf16::TILE_TOKENS
        {
            // SAFETY: BF16 plans at `Isa::Avx512` are only made when the CPU has AVX-512 BF16.
            unsafe { bf16::gemm(a, self.bytes, self.row_bytes, rows, store) };
            return;
        }
        if t == 1 && self.has_x4() {
            self.compute_x4(rows, store);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.has_x16n() {
            self.compute_x16n(rows, t, store);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if self.has_k_x4n() {
            self.compute_k_x4n(rows, t, store);
            return;
        }
        let per_call = self.rows_per_call();
        let mut tile = rows.start;
        while tile < rows.end {
            let tile_end = (tile + ROW_TILE).min(rows.end);
            let width = tile_end - tile;
            let mut t0 = 0;
            while t0 < t {
                let g = MAX_TOKENS.min(t - t0);
                // [token][row of the tile]: each token's run of rows leaves in one store.
                let mut buf = [[0.0f32; ROW_TILE]; MAX_TOKENS];
                let mut r = tile;
                while r < tile_end {
                    if per_call == 1 {
                        let mut o = [0.0f32; MAX_TOKENS];
                        self.dot(r, t0, &mut o[..g]);
                        for (b, v) in buf.iter_mut().zip(&o[..g]) {
                            b[r - tile] = *v;
                        }
                        r += 1;
                    } else {
                        // Several weight rows per call where the kernel takes them (BF16).
                        let n = per_call.min(tile_end - r);
                        let mut o = [[0.0f32; MAX_TOKENS]; MAX_ROWS];
                        self.dot_rows(r, t0, g, &mut o[..n]);
                        for (j, oj) in o[..n].iter().enumerate() {
                            for (b, v) in buf.iter_mut().zip(&oj[..g]) {
                                b[r - tile + j] = *v;
                            }
                        }
                        r += n;
                    }
                }
                for (k, b) in buf[..g].iter().enumerate() {
                    store(t0 + k, tile, &b[..width]);
                }
                t0 += g;
            }
            tile = tile_end;
        }
    }

    /// Whether one activation row meets a format with a four-rows-one-token kernel
    /// (`avx512::*_x4`, and BF16's row kernel with four rows).
    fn has_x4(&self) -> bool {
        match (&self.acts, self.isa) {
            (Acts::Int { fmt, .. }, Isa::Avx512) => {
                cfg!(target_arch = "x86_64")
                    && matches!(fmt, IntFmt::Q4K | IntFmt::Q5K | IntFmt::Q6K | IntFmt::Q8_0)
            }
            // `bf16::dot_avx512::<4, 1>`: each (row, token) sum is the same whatever the rows.
            (Acts::Bf16(_), Isa::Avx512) => cfg!(target_arch = "x86_64"),
            _ => false,
        }
    }

    /// [`Plan::compute`] for one token with the `*_x4` kernels. A row alone adds its blocks in
    /// one dependent chain and pays a horizontal integer sum per block; four rows side by side
    /// share the activation loads and one transposing sum tree, and run four chains in the
    /// lanes of a vector (+20–50 % kernel throughput from L3). The four rows of a call come
    /// from the four quarters of a chunk of [`X4_CHUNK`] rows, so that the weights are read
    /// as four long sequential streams, which the hardware prefetchers follow (four adjacent
    /// rows per call make short interleaved streams they do not: decode fell to a third).
    fn compute_x4(
        &self,
        rows: std::ops::Range<usize>,
        mut store: impl FnMut(usize, usize, &[f32]),
    ) {
        let mut buf = vec![0.0f32; X4_CHUNK.min(rows.len())];
        let mut r = rows.start;
        while r < rows.end {
            let len = X4_CHUNK.min(rows.end - r);
            let q = len / 4;
            for i in 0..q {
                let y = self.dot4([r + i, r + q + i, r + 2 * q + i, r + 3 * q + i]);
                for (j, v) in y.into_iter().enumerate() {
                    buf[j * q + i] = v;
                }
            }
            for i in 4 * q..len {
                self.dot(r + i, 0, &mut buf[i..=i]);
            }
            store(0, r, &buf[..len]);
            r += len;
        }
    }

    /// The bytes of weight row `r`.
    fn row(&self, r: usize) -> &'a [u8] {
        &self.bytes[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Whether the plan takes Q8_0 rows sixteen at a time against several activation rows
    /// (`avx512::q8_0_x16n`).
    fn has_x16n(&self) -> bool {
        self.rows_per_call() == MAX_ROWS
    }

    /// Whether the plan takes K-quant rows four at a time against several activation rows
    /// (`avx512::q45_k_x4n`, `avx512::q6_k_x4n`).
    fn has_k_x4n(&self) -> bool {
        matches!(
            self.acts,
            Acts::Int {
                fmt: IntFmt::Q4K | IntFmt::Q5K | IntFmt::Q6K,
                ..
            }
        ) && self.rows_per_call() == 4
    }

    /// Four Q4_K/Q5_K/Q6_K rows `w` against activation rows `t0 .. t0 + g`
    /// (`avx512::q45_k_x4n`, `avx512::q6_k_x4n`): `out[j][i]` for row `j`, token `t0 + i`.
    #[cfg(target_arch = "x86_64")]
    fn k_x4n(&self, w: [&[u8]; 4], t0: usize, g: usize) -> [[f32; MAX_TOKENS]; 4] {
        let Acts::Int { fmt, q } = &self.acts else {
            unreachable!("k_x4n runs only for K-quant plans")
        };
        let mut out = [[0.0f32; MAX_TOKENS]; 4];
        macro_rules! go {
            ($n:literal) => {{
                let a: [&[act::BlockQ8K]; $n] = std::array::from_fn(|i| q.q8_k_row(t0 + i));
                // SAFETY: `Isa::Avx512` is only chosen when the CPU has its features.
                let y = unsafe {
                    match fmt {
                        IntFmt::Q4K => avx512::q45_k_x4n::<$n, false>(w, a),
                        IntFmt::Q5K => avx512::q45_k_x4n::<$n, true>(w, a),
                        IntFmt::Q6K => avx512::q6_k_x4n::<$n>(w, a),
                        _ => unreachable!("k_x4n runs only for K-quant plans"),
                    }
                };
                for (o, yj) in out.iter_mut().zip(y) {
                    o[..$n].copy_from_slice(&yj);
                }
            }};
        }
        for_token_count!(g, go);
        out
    }

    /// [`Plan::compute`] through a kernel that takes `4 · adjacent` weight rows per call:
    /// `adjacent` adjacent rows from each of the four quarters of a chunk of [`X4_CHUNK`] rows,
    /// so that the weights are read as four sequential streams, as [`Plan::compute_x4`] reads
    /// them for one token (sixteen adjacent Q8_0 rows per call read a 4 KB window block by
    /// block, which the hardware prefetchers do not follow: 5.5 GB/s against 17–20 in four
    /// streams). `call(c, buf)` runs the kernel on the rows of [`StreamCall`] `c` and writes
    /// each result to `buf` at [`StreamCall::at`]; the rows the quarters leave go through
    /// [`Plan::dot_rows`].
    #[cfg(target_arch = "x86_64")]
    fn compute_streams(
        &self,
        rows: std::ops::Range<usize>,
        t: usize,
        adjacent: usize,
        mut call: impl FnMut(&StreamCall, &mut [f32]),
        mut store: impl FnMut(usize, usize, &[f32]),
    ) {
        let chunk = X4_CHUNK.min(rows.len());
        let mut buf = vec![0.0f32; t * chunk];
        let mut r = rows.start;
        while r < rows.end {
            let len = X4_CHUNK.min(rows.end - r);
            // Rows per quarter, a multiple of `adjacent`.
            let quarter = len / (4 * adjacent) * adjacent;
            let mut t0 = 0;
            while t0 < t {
                let g = MAX_TOKENS.min(t - t0);
                for i in (0..quarter).step_by(adjacent) {
                    let c = StreamCall {
                        r,
                        quarter,
                        i,
                        t0,
                        g,
                        chunk,
                    };
                    call(&c, &mut buf);
                }
                let mut k = 4 * quarter;
                while k < len {
                    let n = MAX_ROWS.min(len - k);
                    let mut o = [[0.0f32; MAX_TOKENS]; MAX_ROWS];
                    self.dot_rows(r + k, t0, g, &mut o[..n]);
                    for (j, oj) in o[..n].iter().enumerate() {
                        for (i, v) in oj[..g].iter().enumerate() {
                            buf[(t0 + i) * chunk + k + j] = *v;
                        }
                    }
                    k += n;
                }
                t0 += g;
            }
            for tok in 0..t {
                store(tok, r, &buf[tok * chunk..tok * chunk + len]);
            }
            r += len;
        }
    }

    /// [`Plan::compute`] with `avx512::q8_0_x16n` (four adjacent rows from each quarter).
    #[cfg(target_arch = "x86_64")]
    fn compute_x16n(
        &self,
        rows: std::ops::Range<usize>,
        t: usize,
        store: impl FnMut(usize, usize, &[f32]),
    ) {
        let Acts::Int { q, .. } = &self.acts else {
            unreachable!("compute_x16n runs only where has_x16n holds")
        };
        let call = |c: &StreamCall, buf: &mut [f32]| {
            let idx: [usize; avx512::X16_ROWS] = std::array::from_fn(|j| c.row(j / 4, j % 4));
            let w = idx.map(|k| self.row(c.r + k));
            macro_rules! go {
                ($n:literal) => {{
                    let a: [&[act::BlockQ8_0]; $n] = std::array::from_fn(|i| q.q8_0_row(c.t0 + i));
                    // SAFETY: `Isa::Avx512` is only chosen when the CPU has its features.
                    let y = unsafe { avx512::q8_0_x16n::<$n>(w, a) };
                    // Each four lanes are four adjacent rows of one quarter.
                    for (i, yt) in y.iter().enumerate() {
                        for (lanes, v) in yt.chunks_exact(4).enumerate() {
                            let at = c.at(i, idx[avx512::X16_ROW_OF_LANE[4 * lanes]]);
                            buf[at..at + 4].copy_from_slice(v);
                        }
                    }
                }};
            }
            for_token_count!(c.g, go);
        };
        self.compute_streams(rows, t, 4, call, store);
    }

    /// [`Plan::compute`] with the four-row K-quant kernels ([`Plan::k_x4n`]), one row from
    /// each quarter.
    #[cfg(target_arch = "x86_64")]
    fn compute_k_x4n(
        &self,
        rows: std::ops::Range<usize>,
        t: usize,
        store: impl FnMut(usize, usize, &[f32]),
    ) {
        let call = |c: &StreamCall, buf: &mut [f32]| {
            let idx: [usize; 4] = std::array::from_fn(|s| c.row(s, 0));
            let w = idx.map(|k| self.row(c.r + k));
            for (k, yk) in idx.iter().zip(self.k_x4n(w, c.t0, c.g)) {
                for (i, v) in yk[..c.g].iter().enumerate() {
                    buf[c.at(i, *k)] = *v;
                }
            }
        };
        self.compute_streams(rows, t, 1, call, store);
    }

    /// Rows `rows` of W against activation row 0 with the `*_x4` kernel ([`Plan::has_x4`]).
    #[cfg(target_arch = "x86_64")]
    fn dot4(&self, rows: [usize; 4]) -> [f32; 4] {
        let w = rows.map(|r| self.row(r));
        if let Acts::Bf16(a) = &self.acts {
            // SAFETY: BF16 plans at `Isa::Avx512` are only made when the CPU has AVX-512 BF16.
            let y = unsafe { bf16::dot_avx512::<4, 1>(w, [a.row(0)], a.lead()) };
            return y.map(|[v]| v);
        }
        let Acts::Int { fmt, q } = &self.acts else {
            unreachable!("dot4 runs only where has_x4 holds")
        };
        // SAFETY: `Isa::Avx512` is only chosen when the CPU has its features.
        unsafe {
            match fmt {
                IntFmt::Q4K => avx512::q45_k_x4::<false>(w, q.q8_k_row(0)),
                IntFmt::Q5K => avx512::q45_k_x4::<true>(w, q.q8_k_row(0)),
                IntFmt::Q6K => avx512::q6_k_x4(w, q.q8_k_row(0)),
                IntFmt::Q8_0 => avx512::q8_0_x4(w, q.q8_0_row(0)),
                _ => unreachable!("dot4 runs only where has_x4 holds"),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn dot4(&self, _rows: [usize; 4]) -> [f32; 4] {
        unreachable!("no four-row kernels on this architecture")
    }

    /// `out[i] = row r of W · activation row t0 + i`, for `out.len() ≤ MAX_TOKENS` rows (not
    /// for GEMM plans: [`Plan::compute`] handles those).
    #[inline]
    pub(crate) fn dot(&self, r: usize, t0: usize, out: &mut [f32]) {
        let row = self.row(r);
        match &self.acts {
            #[cfg(target_arch = "x86_64")]
            Acts::Gemm(_) | Acts::Rows16 { .. } => {
                unreachable!("GEMM and rows-in-lanes plans run through Plan::compute")
            }
            Acts::Int { fmt, q } => match self.isa {
                Isa::Avx512 if avx512_int(*fmt, row, q, t0, out) => {}
                // SAFETY: `Avx2` is only chosen when the CPU has its features (and AVX-VNNI
                // for `vnni`).
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 { vnni } if unsafe { avx2::int(*fmt, vnni, row, q, t0, out) } => {}
                _ => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = int_ref(*fmt, row, q, t0 + i);
                    }
                }
            },
            Acts::Bf16(a) => match self.isa {
                Isa::Avx512 => {
                    let mut o = [[0.0; MAX_TOKENS]];
                    avx512_bf16(&[row], a, t0, out.len(), &mut o);
                    out.copy_from_slice(&o[0][..out.len()]);
                }
                _ => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = reference::bf16(row, a.row(t0 + i));
                    }
                }
            },
            Acts::Float { x, widen: false } => match self.isa {
                Isa::Avx512 => avx512_float(self.w.dtype(), row, x, t0, out),
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 { .. } => unsafe { avx2::float(self.w.dtype(), row, x, t0, out) },
                _ => {
                    let w: &[f32] = bytemuck::cast_slice(row);
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = reference::f32_dot(w, x.row(t0 + i));
                    }
                }
            },
            Acts::Float { x, widen: true } => SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(self.w.cols(), 0.0);
                qinfer_quant::dequantize_row(self.w.dtype(), row, &mut s)
                    .expect("weights are validated at load");
                match self.isa {
                    Isa::Avx512 => {
                        avx512_float(DType::F32, bytemuck::cast_slice(&s), x, t0, out);
                    }
                    // SAFETY: as above.
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 { .. } => unsafe {
                        avx2::float(DType::F32, bytemuck::cast_slice(&s), x, t0, out);
                    },
                    _ => {
                        for (i, o) in out.iter_mut().enumerate() {
                            *o = reference::f32_dot(&s, x.row(t0 + i));
                        }
                    }
                }
            }),
        }
    }
}

impl Plan<'_> {
    /// Weight rows [`Plan::dot_rows`] takes per call: more than one where the kernel shares
    /// its activation loads between weight rows (not for a single token: decode streams the
    /// weights row after row, the order the hardware prefetcher follows best).
    pub(crate) fn rows_per_call(&self) -> usize {
        match (&self.acts, self.isa) {
            (Acts::Bf16(a), Isa::Avx512) if a.rows() > 1 => bf16::ROWS,
            (Acts::Int { fmt, q }, Isa::Avx512)
                if cfg!(target_arch = "x86_64")
                    && q.rows() >= X4N_MIN_TOKENS
                    && matches!(fmt, IntFmt::Q4K | IntFmt::Q5K | IntFmt::Q6K) =>
            {
                4
            }
            (
                Acts::Int {
                    fmt: IntFmt::Q8_0,
                    q,
                },
                Isa::Avx512,
            ) if cfg!(target_arch = "x86_64") && q.rows() >= 2 => MAX_ROWS,
            _ => 1,
        }
    }

    /// `out[j][i] = row r0 + j of W · activation row t0 + i`, for `out.len() ≤ MAX_ROWS`
    /// weight rows (best: [`Plan::rows_per_call`]) and `g ≤ MAX_TOKENS` activation rows.
    pub(crate) fn dot_rows(&self, r0: usize, t0: usize, g: usize, out: &mut [[f32; MAX_TOKENS]]) {
        match (&self.acts, self.isa) {
            (Acts::Bf16(a), Isa::Avx512) => {
                for (c, out) in out.chunks_mut(bf16::ROWS).enumerate() {
                    let rows: [&[u8]; bf16::ROWS] = std::array::from_fn(|j| {
                        self.row(r0 + c * bf16::ROWS + j.min(out.len() - 1))
                    });
                    avx512_bf16(&rows[..out.len()], a, t0, g, out);
                }
            }
            #[cfg(target_arch = "x86_64")]
            (Acts::Int { fmt, .. }, Isa::Avx512)
                if out.len() == 4
                    && g >= X4N_MIN_TOKENS
                    && matches!(fmt, IntFmt::Q4K | IntFmt::Q5K | IntFmt::Q6K) =>
            {
                let w: [&[u8]; 4] = std::array::from_fn(|j| self.row(r0 + j));
                for (o, y) in out.iter_mut().zip(self.k_x4n(w, t0, g)) {
                    o[..g].copy_from_slice(&y[..g]);
                }
            }
            #[cfg(target_arch = "x86_64")]
            (
                Acts::Int {
                    fmt: IntFmt::Q8_0,
                    q,
                },
                Isa::Avx512,
            ) if g >= 2 => {
                macro_rules! go {
                    ($n:literal) => {{
                        let a: [&[act::BlockQ8_0]; $n] =
                            std::array::from_fn(|i| q.q8_0_row(t0 + i));
                        // Sixteen rows at a time in the rows-in-lanes kernel, then four, then
                        // one (all give the same bits).
                        let mut j = 0;
                        while j < out.len() {
                            let r = r0 + j;
                            let left = out.len() - j;
                            if left >= avx512::X16_ROWS {
                                let w: [&[u8]; avx512::X16_ROWS] =
                                    std::array::from_fn(|i| self.row(r + i));
                                // SAFETY: `Isa::Avx512` is only chosen when the CPU has its
                                // features.
                                let y = unsafe { avx512::q8_0_x16n::<$n>(w, a) };
                                for (i, yi) in y.iter().enumerate() {
                                    for (lane, v) in yi.iter().enumerate() {
                                        out[j + avx512::X16_ROW_OF_LANE[lane]][i] = *v;
                                    }
                                }
                                j += avx512::X16_ROWS;
                            } else if left >= 4 {
                                let w: [&[u8]; 4] = std::array::from_fn(|i| self.row(r + i));
                                // SAFETY: as above.
                                let y = unsafe { avx512::q8_0_x4n::<$n>(w, a) };
                                for (o, yj) in out[j..].iter_mut().zip(y) {
                                    o[..$n].copy_from_slice(&yj);
                                }
                                j += 4;
                            } else {
                                self.dot(r, t0, &mut out[j][..$n]);
                                j += 1;
                            }
                        }
                    }};
                }
                for_token_count!(g, go);
            }
            _ => {
                for (j, o) in out.iter_mut().enumerate() {
                    self.dot(r0 + j, t0, &mut o[..g]);
                }
            }
        }
    }
}

fn int_ref(fmt: IntFmt, row: &[u8], q: &QuantActs, t: usize) -> f32 {
    match fmt {
        IntFmt::Q8_0 => reference::q8_0(row, q.q8_0_row(t)),
        IntFmt::Q4_0 => reference::q4_0(row, q.q8_0_row(t)),
        IntFmt::Q5_0 => reference::q5_0(row, q.q8_0_row(t)),
        IntFmt::Iq4Nl => reference::iq4_nl(row, q.q8_0_row(t)),
        IntFmt::Q4K => reference::q4_k(row, q.q8_k_row(t)),
        IntFmt::Q5K => reference::q5_k(row, q.q8_k_row(t)),
        IntFmt::Q6K => reference::q6_k(row, q.q8_k_row(t)),
        IntFmt::Iq4Xs => reference::iq4_xs(row, q.q8_k_row(t)),
    }
}

/// Calls `$kernel::<N>` with `N = out.len()` activation rows `$row` for `$t = t0 .. t0 + N`.
macro_rules! call_n {
    ($out:expr, $t0:expr, |$t:ident| $row:expr, $kernel:ident, $w:expr) => {{
        let out: &mut [f32] = $out;
        let t0: usize = $t0;
        let row = |$t: usize| $row;
        // SAFETY: only reached when `isa()` (or a test) confirmed the AVX-512 feature set.
        unsafe {
            match out.len() {
                1 => out.copy_from_slice(&$kernel::<1>($w, [row(t0)])),
                2 => out.copy_from_slice(&$kernel::<2>($w, [row(t0), row(t0 + 1)])),
                3 => out.copy_from_slice(&$kernel::<3>($w, [row(t0), row(t0 + 1), row(t0 + 2)])),
                4 => out.copy_from_slice(&$kernel::<4>(
                    $w,
                    [row(t0), row(t0 + 1), row(t0 + 2), row(t0 + 3)],
                )),
                5 => out.copy_from_slice(&$kernel::<5>(
                    $w,
                    [row(t0), row(t0 + 1), row(t0 + 2), row(t0 + 3), row(t0 + 4)],
                )),
                6 => out.copy_from_slice(&$kernel::<6>(
                    $w,
                    std::array::from_fn::<_, 6, _>(|i| row(t0 + i)),
                )),
                7 => out.copy_from_slice(&$kernel::<7>(
                    $w,
                    std::array::from_fn::<_, 7, _>(|i| row(t0 + i)),
                )),
                8 => out.copy_from_slice(&$kernel::<8>(
                    $w,
                    std::array::from_fn::<_, 8, _>(|i| row(t0 + i)),
                )),
                n => unreachable!("kernels take 1..={MAX_TOKENS} rows, not {n}"),
            }
        }
    }};
}

/// The AVX-512 integer kernel for `fmt`, if there is one (returns whether it ran).
fn avx512_int(fmt: IntFmt, row: &[u8], q: &QuantActs, t0: usize, out: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use avx512::{iq4_xs, q4_0, q6_k, q8_0};
        match fmt {
            IntFmt::Q8_0 => call_n!(out, t0, |t| q.q8_0_row(t), q8_0, row),
            IntFmt::Q4_0 => call_n!(out, t0, |t| q.q8_0_row(t), q4_0, row),
            IntFmt::Q4K => call_n!(out, t0, |t| q.q8_k_row(t), q4_k, row),
            IntFmt::Q5K => call_n!(out, t0, |t| q.q8_k_row(t), q5_k, row),
            IntFmt::Q6K => call_n!(out, t0, |t| q.q8_k_row(t), q6_k, row),
            IntFmt::Iq4Xs => call_n!(out, t0, |t| q.q8_k_row(t), iq4_xs, row),
            IntFmt::Q5_0 | IntFmt::Iq4Nl => return false,
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (fmt, row, q, t0, out);
        false
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn q4_k<const N: usize>(w: &[u8], a: [&[act::BlockQ8K]; N]) -> [f32; N] {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::q45_k::<N, false>(w, a) }
}

#[cfg(target_arch = "x86_64")]
unsafe fn q5_k<const N: usize>(w: &[u8], a: [&[act::BlockQ8K]; N]) -> [f32; N] {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::q45_k::<N, true>(w, a) }
}

#[cfg(target_arch = "x86_64")]
unsafe fn f32w<const N: usize>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::float::<N, 0>(w, x) }
}

#[cfg(target_arch = "x86_64")]
unsafe fn f16w<const N: usize>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::float::<N, 1>(w, x) }
}

#[cfg(target_arch = "x86_64")]
unsafe fn bf16w<const N: usize>(w: &[u8], x: [&[f32]; N]) -> [f32; N] {
    // SAFETY: forwarded from the caller.
    unsafe { avx512::float::<N, 2>(w, x) }
}

/// `out[j][i] = rows[j] · activation row t0 + i` with `vdpbf16ps` (the plan holds
/// [`Acts::Bf16`] at [`Isa::Avx512`] only when [`has_avx512_bf16`]).
fn avx512_bf16(rows: &[&[u8]], a: &Bf16Acts, t0: usize, g: usize, out: &mut [[f32; MAX_TOKENS]]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the CPU has AVX-512 BF16 (see above).
    unsafe {
        bf16::rows_avx512(rows, a, t0, g, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, a, t0, g, out);
        unreachable!("AVX-512 is only selected on x86_64")
    }
}

fn avx512_float(dtype: DType, row: &[u8], x: &Mat, t0: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match dtype {
        DType::F32 => call_n!(out, t0, |t| x.row(t), f32w, row),
        DType::F16 => call_n!(out, t0, |t| x.row(t), f16w, row),
        DType::BF16 => call_n!(out, t0, |t| x.row(t), bf16w, row),
        d => unreachable!("{d} is not a float type"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, row, x, t0, out);
        unreachable!("AVX-512 is only selected on x86_64")
    }
}

#[cfg(test)]
mod tests;
