//! Round trips `dequantize(quantize(x))` for every type qinfer can write.
//!
//! The K-quant and IQ4 quantizers are our own (gguf-python has none), so they are held to
//! measured error bounds rather than bytes: the RMSE on a fixed pseudo-random normal dataset,
//! relative to the data's RMS, must stay at or below the bound recorded here and in
//! `tests/fixtures/quant/README.md` (measured value rounded up by about 2%).

use qinfer_quant::{dequantize_row, quantize_row};
use qinfer_tensor::DType;
use qinfer_testkit::Rng;

/// `(type, bound on RMSE / RMS)` on [`dataset`].
const RMSE_BOUNDS: [(DType, f64); 12] = [
    (DType::Q8_0, 0.0055),
    (DType::Q6_K, 0.0172),
    (DType::Q5_0, 0.0432),
    (DType::Q5_1, 0.0381),
    (DType::Q5_K, 0.0348),
    (DType::Q4_0, 0.0864),
    (DType::Q4_1, 0.0792),
    (DType::Q4_K, 0.0701),
    (DType::IQ4_NL, 0.0745),
    (DType::IQ4_XS, 0.0753),
    (DType::Q3_K, 0.1460),
    (DType::Q2_K, 0.2614),
];

/// Types whose quantizer is exactly sign-symmetric: `rt(−x) = −rt(x)`, bit for bit.
const SIGN_SYMMETRIC: [DType; 7] = [
    DType::Q8_0,
    DType::Q4_0,
    DType::Q5_0,
    DType::Q6_K,
    DType::Q3_K,
    DType::IQ4_NL,
    DType::IQ4_XS,
];

/// 64 rows of 256 standard-normal values (seed 42): 16 384 values, weight-like.
fn dataset() -> Vec<f32> {
    let mut rng = Rng(42);
    (0..64 * 256).map(|_| rng.normal() as f32).collect()
}

/// `dequantize(quantize(x))`.
fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    let mut bytes = vec![0u8; dtype.row_bytes(x.len()).expect("whole blocks")];
    quantize_row(dtype, x, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
    let mut out = vec![f32::NAN; x.len()];
    dequantize_row(dtype, &bytes, &mut out).unwrap();
    out
}

/// RMSE of the round trip relative to the data's RMS.
fn relative_rmse(dtype: DType, x: &[f32]) -> f64 {
    let y = round_trip(dtype, x);
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum();
    let energy: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (err / energy).sqrt()
}

#[test]
fn rmse_within_recorded_bounds() {
    let x = dataset();
    for (dtype, bound) in RMSE_BOUNDS {
        let rmse = relative_rmse(dtype, &x);
        assert!(
            rmse <= bound,
            "{dtype}: relative RMSE {rmse:.6} > bound {bound}"
        );
    }
}

/// Prints the table in `tests/fixtures/quant/README.md`:
/// `cargo test -p qinfer-quant --test roundtrip -- --ignored --nocapture`.
#[test]
#[ignore = "prints the RMSE table"]
#[allow(clippy::print_stderr, reason = "this test's output is the table")]
fn print_rmse_table() {
    let x = dataset();
    eprintln!("| type | RMSE / RMS |\n| --- | --- |");
    for (dtype, _) in RMSE_BOUNDS {
        eprintln!("| {dtype} | {:.5} |", relative_rmse(dtype, &x));
    }
}

#[test]
fn zeros_round_trip_to_zeros() {
    for (dtype, _) in RMSE_BOUNDS {
        let y = round_trip(dtype, &[0.0; 512]);
        assert!(y.iter().all(|v| *v == 0.0), "{dtype}: {y:?}");
    }
}

#[test]
fn constant_rows_round_trip_to_the_constant() {
    for (dtype, _) in RMSE_BOUNDS {
        for c in [0.37f32, -0.37, 3.0, -3.0, 1e-3] {
            let y = round_trip(dtype, &[c; 512]);
            // The constant passes through one or two f16 roundings (scale, sub-block scale).
            // For 1e-3 the super-block scale of the K-quants and IQ4_XS (`c / 31 / 63` for
            // Q5_K, `c / 113 / 32` for IQ4_XS) is an f16 subnormal whose steps are 10-20%;
            // the 6-bit sub-block scale makes up most of it, leaving up to 1.6% (IQ4_XS).
            let tol = c.abs()
                * if c.abs() < 0.01 {
                    0.02
                } else {
                    2.0f32.powi(-9)
                };
            for v in &y {
                assert!((v - c).abs() <= tol, "{dtype}: {c} came back as {v}");
            }
        }
    }
}

#[test]
fn symmetric_formats_are_exactly_sign_symmetric() {
    let x = dataset();
    let neg: Vec<f32> = x.iter().map(|v| -v).collect();
    for dtype in SIGN_SYMMETRIC {
        let (a, b) = (round_trip(dtype, &x), round_trip(dtype, &neg));
        for (i, (p, n)) in a.iter().zip(&b).enumerate() {
            // `==` so that a zero may come back with either sign.
            assert_eq!(*p, -n, "{dtype}: element {i}");
        }
    }
}

#[test]
fn an_outlier_costs_only_its_own_block() {
    // One huge value may ruin its own block's resolution but must not leak to other blocks.
    let mut x = dataset()[..1024].to_vec();
    x[3] = 1000.0;
    for (dtype, _) in RMSE_BOUNDS {
        let block = dtype.block_size();
        let y = round_trip(dtype, &x);
        assert!(
            (y[3] - 1000.0).abs() <= 1000.0 * 0.02,
            "{dtype}: outlier -> {}",
            y[3]
        );
        let clean = round_trip(dtype, &x[block..]);
        assert_eq!(y[block..], clean[..], "{dtype}: other blocks changed");
    }
}
