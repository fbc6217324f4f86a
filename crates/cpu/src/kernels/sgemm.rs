//! Small dense `f32` matrix products between activations: the per-chunk products of the chunked
//! delta rule (`64×128 · 128×128`, `64×128 · 128×64`, `64×64 · 64×128`, `128×64 · 64×128`).
//!
//! [`gemm`] computes `C ← A·B` or `C ← s·C + A·B` on row-major views with strides, so a
//! head's columns inside a wider `[T, N·D]` matrix can be used in place. Two triangular modes
//! skip work that is known to be zero or unwanted: [`Tri::LowerA`] (`A` is lower triangular)
//! and [`Tri::LowerC`] (only the lower triangle of `C` is wanted).
//!
//! The AVX-512 tier keeps a tile of up to 4 rows × 64 columns of `C` in 16 registers; for each
//! `p` it loads row `p` of `B` once (4 vectors) and broadcasts `A[i][p]` for the 4 rows, so
//! every load feeds 4 FMAs. Ragged edges use masked loads and stores, so any shape works.
//! Each element is one FMA chain over `p` in increasing order: the result depends only on the
//! shapes, never on threads. [`gemm_ref`] is the scalar reference (same sums, unfused).

use super::Isa;

/// A read-only row-major view: element `(i, j)` is `data[i * stride + j]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// A writable row-major view: element `(i, j)` is `data[i * stride + j]`.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub stride: usize,
}

/// Which part of the product is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tri {
    /// All of it.
    Full,
    /// `A` is lower triangular (`A[i][p] = 0` for `p > i`, stored as zeros): those terms may
    /// be skipped.
    LowerA,
    /// Only `C[i][j]` with `j ≤ i` is wanted; entries above the diagonal are either left as they
    /// were or given their product.
    LowerC,
}

/// How the product meets the old `C`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Update {
    /// `C ← A·B`.
    Set,
    /// `C ← s·C + A·B`.
    ScaleAdd(f32),
}

fn check(a: &MatRef<'_>, b: &MatRef<'_>, c: &MatMut<'_>) {
    assert!(
        a.cols == b.rows && c.rows == a.rows && c.cols == b.cols,
        "gemm: shapes"
    );
    let fits = |len: usize, rows: usize, cols: usize, stride: usize| {
        rows == 0 || cols == 0 || (cols <= stride && (rows - 1) * stride + cols <= len)
    };
    assert!(fits(a.data.len(), a.rows, a.cols, a.stride), "gemm: A view");
    assert!(fits(b.data.len(), b.rows, b.cols, b.stride), "gemm: B view");
    assert!(fits(c.data.len(), c.rows, c.cols, c.stride), "gemm: C view");
}

/// `C ← A·B` or `C ← s·C + A·B` (see [`Update`]), restricted as `tri` says.
///
/// # Panics
/// If the shapes disagree or a view does not fit its slice.
pub fn gemm(isa: Isa, a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, tri: Tri, update: Update) {
    check(&a, &b, &c);
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        // SAFETY: `isa` is Avx512 only when the CPU has the features; views checked above.
        unsafe { gemm_avx512(a, b, c, tri, update) };
        return;
    }
    let _ = isa;
    gemm_ref(a, b, c, tri, update);
}

/// Scalar reference of [`gemm`].
///
/// # Panics
/// As [`gemm`].
pub fn gemm_ref(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, tri: Tri, update: Update) {
    check(&a, &b, &c);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let mut acc = vec![0.0f32; n];
    for i in 0..m {
        let k_end = if tri == Tri::LowerA { k.min(i + 1) } else { k };
        let n_end = if tri == Tri::LowerC { n.min(i + 1) } else { n };
        let acc = &mut acc[..n_end];
        acc.fill(0.0);
        for p in 0..k_end {
            let aip = a.data[i * a.stride + p];
            for (o, bj) in acc.iter_mut().zip(&b.data[p * b.stride..][..n_end]) {
                *o += aip * bj;
            }
        }
        let row = &mut c.data[i * c.stride..][..n_end];
        match update {
            Update::Set => row.copy_from_slice(acc),
            Update::ScaleAdd(s) => {
                for (o, x) in row.iter_mut().zip(acc.iter()) {
                    *o = s * *o + x;
                }
            }
        }
    }
}

/// Rows and columns of the AVX-512 register tile.
#[cfg(target_arch = "x86_64")]
const MR: usize = 4;
#[cfg(target_arch = "x86_64")]
const NR: usize = 64;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
unsafe fn gemm_avx512(a: MatRef<'_>, b: MatRef<'_>, c: MatMut<'_>, tri: Tri, update: Update) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let mut i0 = 0;
    while i0 < m {
        let mr = MR.min(m - i0);
        let k_end = if tri == Tri::LowerA {
            k.min(i0 + mr)
        } else {
            k
        };
        let n_end = if tri == Tri::LowerC {
            n.min(i0 + mr)
        } else {
            n
        };
        let mut j0 = 0;
        while j0 < n_end {
            let nc = NR.min(n_end - j0);
            let masks: [u16; 4] = std::array::from_fn(|v| {
                let lanes = nc.saturating_sub(16 * v).min(16);
                ((1u32 << lanes) - 1) as u16
            });
            // SAFETY: rows `i0..i0 + mr` of A and C, rows `0..k_end` of B and columns
            // `j0..j0 + nc` of B and C lie inside the views (`check`); the masks cover only
            // those columns.
            unsafe {
                let t = Tile {
                    k: k_end,
                    a: a.data.as_ptr().add(i0 * a.stride),
                    lda: a.stride,
                    b: b.data.as_ptr().add(j0),
                    ldb: b.stride,
                    c: c.data.as_mut_ptr().add(i0 * c.stride + j0),
                    ldc: c.stride,
                    masks,
                    update,
                };
                match (mr, nc.div_ceil(16)) {
                    (4, 4) => t.run::<4, 4>(),
                    (4, 3) => t.run::<4, 3>(),
                    (4, 2) => t.run::<4, 2>(),
                    (4, 1) => t.run::<4, 1>(),
                    (3, 4) => t.run::<3, 4>(),
                    (3, 3) => t.run::<3, 3>(),
                    (3, 2) => t.run::<3, 2>(),
                    (3, 1) => t.run::<3, 1>(),
                    (2, 4) => t.run::<2, 4>(),
                    (2, 3) => t.run::<2, 3>(),
                    (2, 2) => t.run::<2, 2>(),
                    (2, 1) => t.run::<2, 1>(),
                    (1, 4) => t.run::<1, 4>(),
                    (1, 3) => t.run::<1, 3>(),
                    (1, 2) => t.run::<1, 2>(),
                    _ => t.run::<1, 1>(),
                }
            }
            j0 += NR;
        }
        i0 += MR;
    }
}

/// One register tile: `R` rows × `V` vectors of 16 columns of `C`, over `k` terms.
#[cfg(target_arch = "x86_64")]
struct Tile {
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    masks: [u16; 4],
    update: Update,
}

#[cfg(target_arch = "x86_64")]
impl Tile {
    /// # Safety
    /// AVX-512 F and FMA; `a` readable for `R` rows of `k`, `b` for `k` rows and `c` for `R`
    /// rows under the column masks.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,fma")]
    #[inline]
    unsafe fn run<const R: usize, const V: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        // SAFETY: the caller's contract; masked lanes are never touched.
        unsafe {
            for p in 0..self.k {
                let brow = self.b.add(p * self.ldb);
                let mut bv = [_mm512_setzero_ps(); V];
                for (v, o) in bv.iter_mut().enumerate() {
                    *o = _mm512_maskz_loadu_ps(self.masks[v], brow.add(16 * v));
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let av = _mm512_set1_ps(*self.a.add(r * self.lda + p));
                    for (o, bv) in acc_r.iter_mut().zip(&bv) {
                        *o = _mm512_fmadd_ps(av, *bv, *o);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let crow = self.c.add(r * self.ldc);
                for (v, &x) in acc_r.iter().enumerate() {
                    let (m, p) = (self.masks[v], crow.add(16 * v));
                    let x = match self.update {
                        Update::Set => x,
                        Update::ScaleAdd(s) => {
                            _mm512_fmadd_ps(_mm512_set1_ps(s), _mm512_maskz_loadu_ps(m, p), x)
                        }
                    };
                    _mm512_mask_storeu_ps(p, m, x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 + 1.0) * seed).sin()).collect()
    }

    /// The fast tier against the reference for ragged shapes, strides, every triangular mode
    /// and both updates. FMA contraction is the only difference: 1e-5 relative to the sum of
    /// |terms| (at most 130 terms of size ≤ 1).
    #[test]
    fn tiers_agree() {
        let isa = crate::kernels::Isa::best();
        for (m, n, k) in [
            (1, 1, 1),
            (5, 17, 3),
            (64, 128, 128),
            (64, 64, 128),
            (37, 70, 37),
        ] {
            for tri in [Tri::Full, Tri::LowerA, Tri::LowerC] {
                for update in [Update::Set, Update::ScaleAdd(0.75)] {
                    let (lda, ldb, ldc) = (k + 3, n + 5, n + 1);
                    let mut a = noise(m * lda, 0.37);
                    if tri == Tri::LowerA {
                        for i in 0..m {
                            for p in (i + 1).min(k)..k {
                                a[i * lda + p] = 0.0;
                            }
                        }
                    }
                    let b = noise(k * ldb, 0.53);
                    let c0 = noise(m * ldc, 0.71);
                    let run = |fast: bool| {
                        let mut c = c0.clone();
                        let (av, bv) = (
                            MatRef {
                                data: &a,
                                rows: m,
                                cols: k,
                                stride: lda,
                            },
                            MatRef {
                                data: &b,
                                rows: k,
                                cols: n,
                                stride: ldb,
                            },
                        );
                        let cv = MatMut {
                            data: &mut c,
                            rows: m,
                            cols: n,
                            stride: ldc,
                        };
                        if fast {
                            gemm(isa, av, bv, cv, tri, update);
                        } else {
                            gemm_ref(av, bv, cv, tri, update);
                        }
                        c
                    };
                    let (want, got) = (run(false), run(true));
                    for i in 0..m {
                        for j in 0..n {
                            let (w, g) = (want[i * ldc + j], got[i * ldc + j]);
                            if tri == Tri::LowerC && j > i {
                                continue;
                            }
                            assert!(
                                (w - g).abs() <= 1e-5 * (k as f32 + 1.0),
                                "{m}x{n}x{k} {tri:?} {update:?} ({i},{j}): {w} vs {g}"
                            );
                        }
                        // Padding between rows is never written.
                        for j in n..ldc {
                            assert_eq!(got[i * ldc + j], c0[i * ldc + j]);
                        }
                    }
                }
            }
        }
    }
}
