// Row copies and the rotary embedding. One thread per output element.

struct Params {
    // Output rows and columns of this copy.
    rows: u32,
    cols: u32,
    // Source: row stride, first row (copy_rows), first column.
    src_stride: u32,
    src_row: u32,
    src_col: u32,
    // Destination: row stride, first row, first column.
    dst_stride: u32,
    dst_row: u32,
    dst_col: u32,
    // rope: head width and R/2 (rotated pairs per head).
    head_dim: u32,
    half: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
// gather: the source rows. rope: cos.
@group(0) @binding(3) var<storage, read> idx: array<u32>;
// rope: sin.
@group(0) @binding(4) var<storage, read> sn: array<f32>;

@compute @workgroup_size(256)
fn copy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if i >= p.rows * p.cols { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    out[(p.dst_row + r) * p.dst_stride + p.dst_col + c] =
        a[(p.src_row + r) * p.src_stride + p.src_col + c];
}

@compute @workgroup_size(256)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if i >= p.rows * p.cols { return; }
    let r = i / p.cols;
    let c = i % p.cols;
    out[(p.dst_row + r) * p.dst_stride + p.dst_col + c] =
        a[idx[r] * p.src_stride + p.src_col + c];
}

// NeoX rotary embedding: in every `head_dim`-wide head of row t, pairs (i, i + half) for
// i < half turn by cos/sin[t·half + i]; the rest is copied.
@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = wg_index(wid, nwg) * 256u + lid;
    if i >= p.rows * p.cols { return; }
    let t = i / p.cols;
    let d = (i % p.cols) % p.head_dim;
    let x = a[i];
    if d < p.half {
        let cs = bitcast<f32>(idx[t * p.half + d]);
        let s = sn[t * p.half + d];
        out[i] = x * cs - a[i + p.half] * s;
    } else if d < 2u * p.half {
        let j = d - p.half;
        let cs = bitcast<f32>(idx[t * p.half + j]);
        let s = sn[t * p.half + j];
        out[i] = x * cs + a[i - p.half] * s;
    } else {
        out[i] = x;
    }
}
