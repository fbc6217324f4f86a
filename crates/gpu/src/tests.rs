//! The element-wise, norm, copy and rope kernels against the CPU backend, at awkward sizes.
//! Each kernel module (matmul, attention, deltanet, state) tests its own kernels.
//!
//! Tolerances: element-wise ops compute the same f32 expression as the CPU, up to the
//! device's `exp` (lavapipe: LLVM's, within a few ulp) — 1e-6 relative. Norms sum in a
//! different order (a tree of 256 partial sums against the CPU's SIMD lanes) — 2e-6 relative
//! over widths ≤ 5,000. GELU (erf) uses a fit of erf within 1.2e-7 — 1e-6 absolute.

use std::sync::{Arc, OnceLock};

use qinfer_backend::{Act, Backend, Gelu};
use qinfer_tensor::Mat;

use crate::{Gpu, Pick};

/// The test adapter (the best there is: lavapipe on CI), shared by the tests of the crate;
/// `None` (and a message, once) where no adapter can be made at all.
pub(crate) fn gpu() -> Option<Arc<Gpu>> {
    static GPU: OnceLock<Option<Arc<Gpu>>> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::open(Pick::Best) {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("SKIPPED: GPU kernel tests: {e}");
            }
            None
        }
    })
    .clone()
}

pub(crate) fn cpu() -> qinfer_cpu::Cpu {
    qinfer_cpu::Cpu::from_env()
}

/// A deterministic pseudo-random matrix in ±`amp`.
pub(crate) fn rand_mat(rows: usize, cols: usize, seed: u64, amp: f32) -> Mat {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let data = (0..rows * cols)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * amp
        })
        .collect();
    Mat::from_vec(data, rows, cols)
}

/// max |a − b| / (|b| + floor) over all elements, with the index.
pub(crate) fn max_rel(a: &[f32], b: &[f32], floor: f32) -> (f32, usize) {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| ((x - y).abs() / (y.abs() + floor), i))
        .fold((0.0, 0), |m, x| if x.0 > m.0 { x } else { m })
}

fn check(name: &str, got: Mat, want: &Mat, tol: f32) {
    assert_eq!(
        (got.rows, got.cols),
        (want.rows, want.cols),
        "{name}: shape"
    );
    let (d, i) = max_rel(&got.data, &want.data, 1.0);
    assert!(
        d <= tol,
        "{name}: error {d} at {i}: {} vs {}",
        got.data[i],
        want.data[i]
    );
}

/// Runs `op` on both backends from the same inputs and compares.
fn both(name: &str, inputs: &[Mat], tol: f32, op: impl Fn(&dyn Backend, Vec<Act>) -> Act) {
    let Some(g) = gpu() else { return };
    let c = cpu();
    let on = |b: &dyn Backend| {
        let acts = inputs.iter().map(|m| b.upload(m.clone())).collect();
        b.download(op(b, acts))
    };
    check(name, on(&*g), &on(&c), tol);
}

const SHAPES: [(usize, usize); 5] = [(1, 1), (1, 300), (3, 257), (17, 64), (5, 4999)];

#[test]
fn elementwise_ops_match_the_cpu() {
    for (i, &(r, c)) in SHAPES.iter().enumerate() {
        let (a, b) = (
            rand_mat(r, c, i as u64, 4.0),
            rand_mat(r, c, 99 + i as u64, 4.0),
        );
        let ins = [a.clone(), b.clone()];
        both("add", &ins, 1e-6, |be, mut x| {
            let y = x.pop().unwrap();
            let mut x = x.pop().unwrap();
            be.add(&mut x, &y);
            x
        });
        both("scale", &ins, 1e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.scale(&mut x, -0.37);
            x
        });
        both("sigmoid_mul", &ins, 1e-6, |be, mut x| {
            let y = x.pop().unwrap();
            let mut x = x.pop().unwrap();
            be.sigmoid_mul(&mut x, &y);
            x
        });
        both("swiglu", &ins, 1e-6, |be, mut x| {
            let y = x.pop().unwrap();
            let mut x = x.pop().unwrap();
            be.swiglu(&mut x, &y);
            x
        });
        let bias = rand_mat(1, c, 7, 1.0).data;
        both("add_bias", &ins, 1e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.add_bias(&mut x, &bias);
            x
        });
        for form in [Gelu::Erf, Gelu::Tanh] {
            both("gelu", &ins, 1e-6, |be, mut x| {
                let mut x = x.swap_remove(0);
                be.gelu(&mut x, form);
                x
            });
        }
        let gate = rand_mat(r, 1, 5, 3.0);
        both(
            "add_gated",
            &[a.clone(), b.clone(), gate],
            1e-6,
            |be, mut x| {
                let g = x.pop().unwrap();
                let y = x.pop().unwrap();
                let mut o = x.pop().unwrap();
                be.add_gated(&mut o, &y, &g);
                o
            },
        );
    }
}

#[test]
fn an_op_leaves_clones_of_its_input_alone() {
    let Some(g) = gpu() else { return };
    let a = g.upload(rand_mat(2, 5, 1, 1.0));
    let keep = a.clone();
    let mut x = a;
    g.scale(&mut x, 2.0);
    let (x, keep) = (g.download(x), g.download(keep));
    for (x, k) in x.data.iter().zip(&keep.data) {
        assert_eq!(*x, 2.0 * k);
    }
}

#[test]
fn scatter_add_adds_in_order_even_to_a_row_named_twice() {
    for &(r, c) in &[(4usize, 3usize), (9, 300)] {
        let out = rand_mat(r, c, 1, 1.0);
        let src = rand_mat(5, c, 2, 1.0);
        let rows = [3usize, 0, 3, r - 1, 1];
        let w = [0.5f32, -1.25, 2.0, 0.125, 1.0];
        both("scatter_add", &[out, src], 1e-6, |be, mut x| {
            let s = x.pop().unwrap();
            let mut o = x.pop().unwrap();
            be.scatter_add(&mut o, &s, &rows, &w);
            o
        });
    }
}

#[test]
fn norms_match_the_cpu() {
    for (i, &(r, c)) in SHAPES.iter().enumerate() {
        let a = rand_mat(r, c, i as u64, 3.0);
        let z = rand_mat(r, c, 50 + i as u64, 3.0);
        let w = rand_mat(1, c, 9, 2.0).data;
        let b = rand_mat(1, c, 10, 2.0).data;
        both("rms_norm", std::slice::from_ref(&a), 2e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.rms_norm(&mut x, &w, 1e-6);
            x
        });
        both("layer_norm", std::slice::from_ref(&a), 2e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.layer_norm(&mut x, &w, &b, 1e-5);
            x
        });
        both("l2_norm", std::slice::from_ref(&a), 2e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.l2_norm(&mut x, c, 1e-6);
            x
        });
        both("gated_rms_norm", &[a.clone(), z], 2e-6, |be, mut x| {
            let z = x.pop().unwrap();
            let mut x = x.pop().unwrap();
            be.gated_rms_norm(&mut x, &z, &w, 1e-6);
            x
        });
    }
    // Groups within rows (per-head norms).
    let a = rand_mat(3, 4 * 24, 4, 3.0);
    let w = rand_mat(1, 24, 5, 1.0).data;
    both(
        "rms_norm per head",
        std::slice::from_ref(&a),
        2e-6,
        |be, mut x| {
            let mut x = x.swap_remove(0);
            be.rms_norm(&mut x, &w, 1e-6);
            x
        },
    );
    both("l2_norm per head", &[a], 2e-6, |be, mut x| {
        let mut x = x.swap_remove(0);
        be.l2_norm(&mut x, 24, 1e-6);
        x
    });
}

#[test]
fn row_and_column_ops_are_exact() {
    let a = rand_mat(7, 30, 3, 5.0);
    let parts = [
        rand_mat(2, 30, 4, 1.0),
        rand_mat(1, 30, 5, 1.0),
        rand_mat(3, 30, 6, 1.0),
    ];
    both("rows", std::slice::from_ref(&a), 0.0, |be, x| {
        be.rows(&x[0], 2..6)
    });
    both("cols", std::slice::from_ref(&a), 0.0, |be, x| {
        be.cols(&x[0], 7, 11)
    });
    both("gather", std::slice::from_ref(&a), 0.0, |be, x| {
        be.gather(&x[0], &[6, 0, 6, 3])
    });
    both("stack", &parts, 0.0, |be, x| be.stack(&x));
    for i in 0..3 {
        both("split_heads", std::slice::from_ref(&a), 0.0, |be, x| {
            be.split_heads(&x[0], 3, &[4, 5, 1]).swap_remove(i)
        });
    }
    both("reshape", std::slice::from_ref(&a), 0.0, |be, mut x| {
        be.reshape(x.swap_remove(0), 14, 15)
    });
    both("zeros", &[], 0.0, |be, _| be.zeros(3, 7));
}

#[test]
fn rope_matches_the_cpu() {
    // Partial rotary (R = 8 of head 32), two heads, 5 rows; and full rotary.
    for (head, half) in [(32usize, 4usize), (16, 8)] {
        let t = 5;
        let a = rand_mat(t, 2 * head, 8, 2.0);
        let ang = rand_mat(t, half, 9, 3.0).data;
        let cos: Vec<f32> = ang.iter().map(|x| x.cos()).collect();
        let sin: Vec<f32> = ang.iter().map(|x| x.sin()).collect();
        both("rope", &[a], 1e-6, |be, mut x| {
            let mut x = x.swap_remove(0);
            be.rope(&mut x, head, &cos, &sin);
            x
        });
    }
}
