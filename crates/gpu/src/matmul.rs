//! Weights in device memory, in their storage format, and the kernels that read them:
//! `x Wᵀ` for every supported block format, and embedding rows.
//!
//! A weight is uploaded once as the bytes it has on the host — GGML blocks, or f32/f16/bf16
//! values — with no dequantized copy: a Q4_K weight takes 4.5 bits per element on the device
//! as in the file. The rows are split into chunks one storage binding can see (whole rows,
//! at most `Ctx::max_binding` bytes); a matmul dispatches once per chunk, each writing its
//! rows of the output.
//!
//! The kernels (`shaders/matmul.wgsl`) decode the blocks as they read them, 32 elements at a
//! time, exactly as `qinfer_quant::dequantize_row` does (same `f32` operations, all exact), so
//! [`embed`] is bit-identical to the host decoders and [`matmul`] differs from an exact dot
//! product only by its `f32` summation.
//!
//! The matmul is shaped for decoding (a few tokens): a workgroup takes 8 rows and up to 8
//! tokens, so each weight row is read once per 8 tokens; larger batches take several groups
//! of tokens along the grid. Every (row, token) sum is taken in one fixed order whatever the
//! batch, so a token's result is bit-identical whether it is decoded alone or in a batch, at
//! any position — the engine relies on it (a sequence's logits must not depend on what else
//! is in the step).

use qinfer_tensor::{DType, Weight};

use crate::context::{Ctx, GBuf, Params, grid, kernel};

/// Threads of a matmul workgroup (`WG` in the shader).
const MATMUL_THREADS: usize = 128;
/// Rows each matmul thread sums (`RPT` in the shader).
const ROWS_PER_THREAD: usize = 2;

/// The threads that share one row (a "team"): enough to give each a part of the row, at most
/// 32 — so a short row (a 256-wide hidden state is 8 parts) does not leave most of a team
/// idle. It depends on the row width alone, so every (row, token) sum keeps one order.
fn team_size(cols: usize) -> usize {
    cols.div_ceil(PART).next_power_of_two().clamp(1, 32)
}

/// Rows one matmul workgroup computes for rows of `cols` elements.
fn rows_per_group(cols: usize) -> usize {
    MATMUL_THREADS / team_size(cols) * ROWS_PER_THREAD
}
/// Tokens one matmul workgroup computes (`TOK` in the shader).
const TOKENS_PER_GROUP: usize = 8;
/// Threads of an embed workgroup (`EMBED_WG`); each decodes one part.
const EMBED_THREADS: usize = 64;
/// Elements of a part, the unit every kernel decodes.
const PART: usize = 32;
/// The largest chunk: the shaders compute byte offsets within a chunk in `u32`.
const MAX_CHUNK: u64 = 1 << 31;

/// A weight `[rows, cols]` in device memory: the rows split into chunks that one binding can
/// see, each chunk the rows' stored bytes as they are on the host.
#[derive(Debug)]
pub(crate) struct GpuWeight {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub chunks: Vec<WeightChunk>,
}

/// Rows `first_row..first_row + rows` of a weight, their bytes from offset 0 (the buffer is
/// zero-padded to whole words).
#[derive(Debug)]
pub(crate) struct WeightChunk {
    pub first_row: usize,
    pub rows: usize,
    pub buf: wgpu::Buffer,
}

/// The shader entry points reading `dtype`: `(matmul, embed)`. Exhaustive, so a new format
/// has to be decided on here.
fn entries(dtype: DType) -> Option<(&'static str, &'static str)> {
    Some(match dtype {
        DType::F32 => ("matmul_f32", "embed_f32"),
        DType::F16 => ("matmul_f16", "embed_f16"),
        DType::BF16 => ("matmul_bf16", "embed_bf16"),
        DType::Q4_0 => ("matmul_q4_0", "embed_q4_0"),
        DType::Q4_1 => ("matmul_q4_1", "embed_q4_1"),
        DType::Q5_0 => ("matmul_q5_0", "embed_q5_0"),
        DType::Q5_1 => ("matmul_q5_1", "embed_q5_1"),
        DType::Q8_0 => ("matmul_q8_0", "embed_q8_0"),
        DType::Q2_K => ("matmul_q2_k", "embed_q2_k"),
        DType::Q3_K => ("matmul_q3_k", "embed_q3_k"),
        DType::Q4_K => ("matmul_q4_k", "embed_q4_k"),
        DType::Q5_K => ("matmul_q5_k", "embed_q5_k"),
        DType::Q6_K => ("matmul_q6_k", "embed_q6_k"),
        DType::IQ4_NL => ("matmul_iq4_nl", "embed_iq4_nl"),
        DType::IQ4_XS => ("matmul_iq4_xs", "embed_iq4_xs"),
    })
}

/// Whether the GPU kernels read weights stored as `dtype`.
pub fn supports_dtype(dtype: DType) -> bool {
    entries(dtype).is_some()
}

/// `w`'s bytes uploaded.
pub(crate) fn upload_weight(ctx: &Ctx, w: &Weight) -> Result<GpuWeight, String> {
    upload_chunked(ctx, w, ctx.max_binding().min(MAX_CHUNK))
}

/// `w`'s bytes uploaded in chunks of at most `limit` bytes (whole rows each).
fn upload_chunked(ctx: &Ctx, w: &Weight, limit: u64) -> Result<GpuWeight, String> {
    let (dtype, rows, cols) = (w.dtype(), w.rows(), w.cols());
    let what = || format!("{dtype} weight [{rows}, {cols}]");
    if !supports_dtype(dtype) {
        return Err(format!("{}: no GPU kernel reads {dtype}", what()));
    }
    // The shaders index rows, columns and outputs in u32.
    if u32::try_from(rows).is_err() || u32::try_from(cols).is_err() {
        return Err(format!("{}: too large for the GPU kernels", what()));
    }
    let row_bytes = w.row_bytes();
    // A chunk is padded to whole words; rounding the limit down keeps the padding inside it.
    let limit = limit.min(MAX_CHUNK) / 4 * 4;
    let per_chunk = if row_bytes == 0 {
        rows.max(1)
    } else {
        usize::try_from(limit / row_bytes as u64).unwrap_or(usize::MAX)
    };
    if per_chunk == 0 {
        return Err(format!(
            "{}: one row is {row_bytes} bytes, more than a GPU binding can see ({limit} bytes)",
            what()
        ));
    }
    let mut chunks = Vec::new();
    let mut first = 0;
    while first < rows {
        let n = per_chunk.min(rows - first);
        let bytes = first
            .checked_mul(row_bytes)
            .zip(n.checked_mul(row_bytes))
            .and_then(|(start, len)| w.bytes().get(start..start.checked_add(len)?))
            .ok_or_else(|| format!("{}: rows {first}+{n} outside its bytes", what()))?;
        let buf = ctx.buffer(bytes.len() as u64);
        write_padded(ctx, &buf, bytes);
        chunks.push(WeightChunk {
            first_row: first,
            rows: n,
            buf,
        });
        first += n;
    }
    Ok(GpuWeight {
        dtype,
        rows,
        cols,
        chunks,
    })
}

/// Writes `bytes` at the start of a fresh buffer. No recorded command reads the buffer yet,
/// so a queue write (which runs before the next submission's commands) is in order. Queue
/// writes are whole words: a last partial word is padded with zeros.
fn write_padded(ctx: &Ctx, buf: &wgpu::Buffer, bytes: &[u8]) {
    let whole = bytes.len() / 4 * 4;
    if whole > 0 {
        ctx.queue.write_buffer(buf, 0, &bytes[..whole]);
    }
    if whole < bytes.len() {
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        ctx.queue.write_buffer(buf, whole as u64, &tail);
    }
}

fn row_bytes(w: &GpuWeight) -> usize {
    w.dtype
        .row_bytes(w.cols)
        .expect("whole blocks, checked at upload")
}

fn entry(w: &GpuWeight) -> (&'static str, &'static str) {
    entries(w.dtype).expect("a supported dtype, checked at upload")
}

/// `x [t, w.cols] · Wᵀ` → `[t, w.rows]`.
pub(crate) fn matmul(ctx: &Ctx, x: &GBuf, t: usize, w: &GpuWeight) -> GBuf {
    matmul_within(ctx, x, t, w, ctx.max_binding())
}

/// [`matmul`] binding at most `max_binding` bytes of the input and of the output at once.
fn matmul_within(ctx: &Ctx, x: &GBuf, t: usize, w: &GpuWeight, max_binding: u64) -> GBuf {
    let len = t
        .checked_mul(w.rows)
        .expect("matmul: output size overflows");
    let out = ctx.alloc(len);
    if len == 0 {
        return out;
    }
    let x_len = t.checked_mul(w.cols).expect("matmul: input size overflows");
    assert!(
        x.len >= x_len,
        "matmul: {} activations for an input [{t}, {}]",
        x.len,
        w.cols
    );
    assert!(
        u32::try_from(len.max(x_len)).is_ok(),
        "matmul: [{t}, {}] · [{}, {}]ᵀ past u32 indexing",
        w.cols,
        w.rows,
        w.cols
    );
    let k = kernel("matmul", entry(w).0);
    // Tokens per dispatch: all of them unless the input or the output rows would pass what
    // one binding may see (a prefill's logits of every position: [T, 248,320] is 1 MB a
    // row); then slices of a multiple of 64 tokens, bound at their offsets (64 rows of f32
    // are a multiple of 256 bytes, the largest offset alignment WebGPU allows).
    let per_token = 4 * w.rows.max(w.cols) as u64;
    let fit = (max_binding / per_token) as usize;
    let slice = if fit >= t { t } else { fit / 64 * 64 };
    assert!(
        slice > 0,
        "matmul: one token's [{}] row past what one GPU binding may see",
        w.rows.max(w.cols)
    );
    // Rows `at..at + n` of `g`, rounded up to whole vec4s (the input is read as `vec4`s;
    // pooled buffers are whole multiples of 64 bytes, so the rounding stays inside).
    fn bind(g: &GBuf, at: usize, n: usize, width: usize) -> wgpu::BindingResource<'_> {
        let offset = (at * width * 4) as u64;
        let size = ((n * width * 4) as u64)
            .next_multiple_of(16)
            .min(g.buffer().size() - offset);
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: g.buffer(),
            offset,
            size: wgpu::BufferSize::new(size),
        })
    }
    for t0 in (0..t).step_by(slice) {
        let n = slice.min(t - t0);
        let token_groups = n.div_ceil(TOKENS_PER_GROUP);
        for c in &w.chunks {
            let groups = c
                .rows
                .div_ceil(rows_per_group(w.cols))
                .checked_mul(token_groups)
                .expect("matmul: workgroup count overflows");
            let params = Params::new()
                .u(c.rows)
                .u(w.cols)
                .u(row_bytes(w))
                .u(n)
                .u(c.first_row)
                .u(w.rows)
                .u(team_size(w.cols));
            ctx.dispatch(
                k,
                params.bytes(),
                &[
                    bind(&out, t0, n, w.rows),
                    c.buf.as_entire_binding(),
                    bind(x, t0, n, w.cols),
                ],
                grid(groups),
            );
        }
    }
    out
}

/// Panics unless every id is a row of a `rows`-row table (the model validates token ids; a
/// bad one here is a bug).
fn check_ids(rows: usize, ids: &[u32]) {
    if let Some(id) = ids.iter().find(|&&id| id as usize >= rows) {
        panic!("embed: row {id} of a {rows}-row table");
    }
}

/// Rows `ids` of the table, widened to f32: `[ids.len(), table.cols]`.
pub(crate) fn embed(ctx: &Ctx, table: &GpuWeight, ids: &[u32]) -> GBuf {
    check_ids(table.rows, ids);
    let cols = table.cols;
    let out = ctx.alloc(
        ids.len()
            .checked_mul(cols)
            .expect("embed: output size overflows"),
    );
    if ids.is_empty() || cols == 0 {
        return out;
    }
    // One thread per (id, part); the shader's thread and output indices are u32.
    let threads = ids
        .len()
        .checked_mul(cols.div_ceil(PART))
        .filter(|&n| u32::try_from(n.max(out.len)).is_ok())
        .expect("embed: too many rows for u32 indexing");
    let id_buf = ctx.upload(bytemuck::cast_slice::<u32, f32>(ids));
    let k = kernel("matmul", entry(table).1);
    for c in &table.chunks {
        let rows = c.first_row..c.first_row + c.rows;
        if !ids.iter().any(|&id| rows.contains(&(id as usize))) {
            continue;
        }
        let params = Params::new()
            .u(c.rows)
            .u(cols)
            .u(row_bytes(table))
            .u(ids.len())
            .u(c.first_row)
            .u(table.rows);
        ctx.dispatch(
            k,
            params.bytes(),
            &[out.bind(), c.buf.as_entire_binding(), id_buf.bind()],
            grid(threads.div_ceil(EMBED_THREADS)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use qinfer_quant::{dequantize_row, quantize_row};
    use qinfer_tensor::ByteView;

    use super::*;

    /// xorshift64*: reproducible test data without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        /// Uniform in `[-1, 1)`.
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }

        /// Bell-shaped around zero with an occasional outlier, like trained weights.
        fn value(&mut self) -> f32 {
            let v = self.unit() + self.unit() + self.unit();
            if self.next().is_multiple_of(64) {
                8.0 * v
            } else {
                v
            }
        }
    }

    /// A random `[rows, cols]` weight stored as `dtype`, and its values as the host decodes
    /// them. Row scales vary over three decades.
    fn random_weight(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> (Weight, Vec<f32>) {
        let rb = dtype.row_bytes(cols).expect("whole blocks");
        let mut bytes = vec![0u8; rows * rb];
        for row in bytes.chunks_exact_mut(rb.max(1)).take(rows) {
            let scale = 10f32.powf(1.5 * rng.unit() - 1.0);
            let v: Vec<f32> = (0..cols).map(|_| scale * rng.value()).collect();
            quantize_row(dtype, &v, row).expect("quantizable");
        }
        let w = Weight::new(dtype, rows, cols, ByteView::from_vec(bytes)).expect("a weight");
        let mut values = vec![0.0; rows * cols];
        for (r, out) in values.chunks_exact_mut(cols.max(1)).take(rows).enumerate() {
            dequantize_row(dtype, w.row(r), out).expect("decodable");
        }
        (w, values)
    }

    fn random_x(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.value()).collect()
    }

    /// `Σ a·b` and `Σ |a·b|` in f64.
    fn dot64(a: &[f32], b: &[f32]) -> (f64, f64) {
        a.iter()
            .zip(b)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .fold((0.0, 0.0), |(s, m), p| (s + p, m + p.abs()))
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits())
    }

    /// Test widths: 1..4 blocks, and for float rows widths that end inside a part and rows
    /// that start off a 4-element boundary.
    fn widths(dtype: DType) -> Vec<usize> {
        match dtype.block_size() {
            1 => vec![1, 3, 32, 37, 64, 100],
            b => (1..=4).map(|n| n * b).collect(),
        }
    }

    /// Matmul against the f64 dot product of the host-decoded weights, for every format,
    /// row counts off the 8-row tile, widths of 1..4 blocks (float widths off the 32-element
    /// part) and 1..17 tokens (one and several token groups).
    ///
    /// Tolerance: |gpu − exact| ≤ 1e-5 · Σ|w·x|. The decoded weights are exact, so the error
    /// is the f32 rounding of each product and of the sum: at these widths a lane takes one
    /// part, so a sum is a chain of at most 4 (a vec4 dot) + 8 (the part's groups) + 32 (the
    /// lanes) additions, each off by at most 2^-24 of a running magnitude ≤ Σ|w·x|:
    /// ≤ 45 · 6e-8 ≈ 2.7e-6 of Σ|w·x|. (Measured on lavapipe: ≤ 2.1e-7.)
    #[test]
    fn matmul_matches_an_f64_dot_product_for_every_format() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for dtype in DType::ALL {
            assert!(supports_dtype(dtype), "{dtype}");
            for rows in [1, 7, 33, 130] {
                for cols in widths(dtype) {
                    let (w, values) = random_weight(&mut rng, dtype, rows, cols);
                    let g = upload_weight(ctx, &w).expect("uploads");
                    let x = random_x(&mut rng, 17 * cols);
                    let xb = ctx.upload(&x);
                    for t in [1, 2, 3, 5, 8, 9, 17] {
                        let y = ctx.read_f32(&matmul(ctx, &xb, t, &g), t * rows);
                        for (i, yi) in y.chunks_exact(rows).enumerate() {
                            let xi = &x[i * cols..(i + 1) * cols];
                            for (r, &got) in yi.iter().enumerate() {
                                let (exact, mag) = dot64(&values[r * cols..(r + 1) * cols], xi);
                                let err = (f64::from(got) - exact).abs();
                                assert!(
                                    err <= 1e-5 * mag,
                                    "{dtype} [{rows}, {cols}], t = {t}, token {i}, row {r}: {got} vs {exact} (Σ|wx| {mag})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Each token's row of a 13-token matmul equals, bit for bit, the matmul of that token
    /// alone: the same sum order at every place in every batch (two token groups, every slot
    /// of a group; float rows of odd width also start off a vec4 boundary in the batch).
    #[test]
    fn a_tokens_result_does_not_depend_on_its_batch() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let mut rng = Rng(7);
        for dtype in DType::ALL {
            let rows = 33;
            let cols = match dtype.block_size() {
                1 => 37,
                b => 2 * b,
            };
            let (w, _) = random_weight(&mut rng, dtype, rows, cols);
            let g = upload_weight(ctx, &w).expect("uploads");
            let t = 13;
            let x = random_x(&mut rng, t * cols);
            let all = ctx.read_f32(&matmul(ctx, &ctx.upload(&x), t, &g), t * rows);
            for (i, xi) in x.chunks_exact(cols).enumerate() {
                let one = ctx.read_f32(&matmul(ctx, &ctx.upload(xi), 1, &g), rows);
                let batch = &all[i * rows..(i + 1) * rows];
                assert!(
                    same_bits(&one, batch),
                    "{dtype}: token {i} alone {one:?}, in the batch {batch:?}"
                );
            }
        }
    }

    /// Embedding rows (repeated, out of order, first and last) equal the host decoder's
    /// values bit for bit: decoding is exact and in the host's order of operations.
    #[test]
    fn embed_is_bit_exact_for_every_format() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let mut rng = Rng(11);
        let ids = [5u32, 0, 36, 5, 17, 36, 1];
        for dtype in DType::ALL {
            for cols in widths(dtype) {
                let (w, values) = random_weight(&mut rng, dtype, 37, cols);
                let g = upload_weight(ctx, &w).expect("uploads");
                let got = ctx.read_f32(&embed(ctx, &g, &ids), ids.len() * cols);
                for (row, &id) in got.chunks_exact(cols).zip(&ids) {
                    let want = &values[id as usize * cols..(id as usize + 1) * cols];
                    assert!(
                        same_bits(row, want),
                        "{dtype} width {cols}, row {id}: {row:?} vs {want:?}"
                    );
                }
            }
        }
    }

    /// A weight split into many chunks (chunk sizes not a multiple of 4 bytes for the
    /// unaligned formats, so their tails are padded) gives the same bits as in one chunk, for
    /// matmul and for embedding rows from every chunk.
    #[test]
    fn chunked_weights_give_the_same_bits() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let mut rng = Rng(13);
        for (dtype, cols) in [
            (DType::Q6_K, 512),
            (DType::Q8_0, 96),
            (DType::Q4_K, 256),
            (DType::Q3_K, 256),
            (DType::F16, 37),
            (DType::F32, 5),
        ] {
            let rows = 23;
            let (w, _) = random_weight(&mut rng, dtype, rows, cols);
            let rb = w.row_bytes();
            let whole = upload_weight(ctx, &w).expect("uploads");
            assert_eq!(whole.chunks.len(), 1);
            let split = upload_chunked(ctx, &w, 3 * rb as u64 + 2).expect("uploads");
            assert_eq!(split.chunks.len(), rows.div_ceil(3), "{dtype}");
            let mut next = 0;
            for c in &split.chunks {
                assert_eq!((c.first_row, c.rows), (next, 3.min(rows - next)), "{dtype}");
                next += c.rows;
            }
            let t = 10;
            let xb = ctx.upload(&random_x(&mut rng, t * cols));
            let a = ctx.read_f32(&matmul(ctx, &xb, t, &whole), t * rows);
            let b = ctx.read_f32(&matmul(ctx, &xb, t, &split), t * rows);
            assert!(same_bits(&a, &b), "{dtype}");
            let ids = [22u32, 0, 3, 2, 14, 22];
            let a = ctx.read_f32(&embed(ctx, &whole, &ids), ids.len() * cols);
            let b = ctx.read_f32(&embed(ctx, &split, &ids), ids.len() * cols);
            assert!(same_bits(&a, &b), "{dtype}");
        }
    }

    /// The backend seam: `prepare` uploads, `matmul_many` and `embed` read the prepared
    /// weights (tolerance as for the kernels).
    /// A matmul whose output would pass a binding runs in slices of 64·k tokens bound at
    /// their offsets: the same bits as one dispatch.
    #[test]
    fn token_slices_past_the_binding_give_the_same_bits() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let mut rng = Rng(23);
        let (t, rows, cols) = (200, 100, 64);
        let (w, _) = random_weight(&mut rng, DType::Q4_0, rows, cols);
        let w = upload_weight(&gpu.ctx, &w).expect("uploads");
        let x = gpu.ctx.upload(&random_x(&mut rng, t * cols));
        let whole = gpu.ctx.read_f32(&matmul(&gpu.ctx, &x, t, &w), t * rows);
        // 400 bytes a token's output row: 163 fit, slices of 128.
        let sliced = matmul_within(&gpu.ctx, &x, t, &w, 64 << 10);
        assert_eq!(gpu.ctx.read_f32(&sliced, t * rows), whole);
    }

    #[test]
    fn through_the_backend() {
        use qinfer_backend::Backend;
        use qinfer_tensor::Mat;

        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let mut rng = Rng(17);
        let (t, cols) = (3, 512);
        let (wa, va) = random_weight(&mut rng, DType::Q4_K, 9, cols);
        let (wb, vb) = random_weight(&mut rng, DType::Q6_K, 5, cols);
        let wa = gpu.prepare(wa).expect("prepares");
        let wb = gpu.prepare(wb).expect("prepares");
        let x = random_x(&mut rng, t * cols);
        let xa = gpu.upload(Mat::from_vec(x.clone(), t, cols));
        let values = [va, vb];
        for (y, values) in gpu.matmul_many(&xa, &[&wa, &wb]).into_iter().zip(&values) {
            let rows = values.len() / cols;
            let y = gpu.download(y);
            assert_eq!((y.rows, y.cols), (t, rows));
            for (i, yi) in y.data.chunks_exact(rows).enumerate() {
                for (r, &got) in yi.iter().enumerate() {
                    let (exact, mag) = dot64(
                        &values[r * cols..(r + 1) * cols],
                        &x[i * cols..(i + 1) * cols],
                    );
                    assert!(
                        (f64::from(got) - exact).abs() <= 1e-5 * mag,
                        "{got} vs {exact}"
                    );
                }
            }
        }
        let ids = [4u32, 0, 4];
        let e = gpu.download(gpu.embed(&wb, &ids));
        assert_eq!((e.rows, e.cols), (ids.len(), cols));
        for (row, &id) in e.data.chunks_exact(cols).zip(&ids) {
            let id = id as usize;
            assert!(
                same_bits(row, &values[1][id * cols..(id + 1) * cols]),
                "row {id}"
            );
        }
    }

    #[test]
    fn a_row_past_the_binding_limit_is_refused_by_shape_and_type() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let (w, _) = random_weight(&mut Rng(3), DType::Q4_K, 2, 512);
        let err = upload_chunked(ctx, &w, 200).expect_err("a 288-byte row past 200 bytes");
        assert!(
            err.contains("Q4_K weight [2, 512]") && err.contains("288"),
            "{err}"
        );
    }

    /// Empty outputs and zero-width rows (a sum of nothing is 0).
    #[test]
    fn degenerate_shapes() {
        let Some(gpu) = crate::tests::gpu() else {
            return;
        };
        let ctx = &gpu.ctx;
        let w = Weight::from_f32(Vec::new(), 3, 0);
        let g = upload_weight(ctx, &w).expect("uploads");
        let x = ctx.upload(&[]);
        assert_eq!(ctx.read_f32(&matmul(ctx, &x, 2, &g), 6), vec![0.0; 6]);
        assert_eq!(matmul(ctx, &x, 0, &g).len, 0);
        assert_eq!(embed(ctx, &g, &[2, 1]).len, 0);
        let empty = upload_weight(ctx, &Weight::from_f32(Vec::new(), 0, 4)).expect("uploads");
        assert!(empty.chunks.is_empty());
        assert_eq!(matmul(ctx, &ctx.upload(&[1.0; 4]), 1, &empty).len, 0);
    }

    #[test]
    #[should_panic(expected = "embed: row 7 of a 7-row table")]
    fn embedding_ids_are_checked() {
        check_ids(7, &[0, 6, 7]);
    }
}
