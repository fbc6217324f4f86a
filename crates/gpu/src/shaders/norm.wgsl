// Norms: one workgroup of 256 threads per normalised group, sums by a tree in workgroup
// memory. Every op writes a new buffer `out`.

struct Params {
    // Groups.
    groups: u32,
    // Group width.
    width: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> z: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if lid < s { red[lid] += red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn sum_sq(base: u32, lid: u32) -> f32 {
    var acc = 0.0;
    for (var i = lid; i < p.width; i += 256u) {
        let x = a[base + i];
        acc += x * x;
    }
    return reduce(lid, acc);
}

// x / sqrt(mean(x²) + eps) · w
@compute @workgroup_size(256)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if g >= p.groups { return; }
    let base = g * p.width;
    let inv = inverseSqrt(sum_sq(base, lid) / f32(p.width) + p.eps);
    for (var i = lid; i < p.width; i += 256u) {
        out[base + i] = a[base + i] * inv * w[i];
    }
}

// x / sqrt(mean(x²) + eps) · w · silu(z)
@compute @workgroup_size(256)
fn gated_rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if g >= p.groups { return; }
    let base = g * p.width;
    let inv = inverseSqrt(sum_sq(base, lid) / f32(p.width) + p.eps);
    for (var i = lid; i < p.width; i += 256u) {
        out[base + i] = a[base + i] * inv * w[i] * silu(z[base + i]);
    }
}

// x / sqrt(Σx² + eps)
@compute @workgroup_size(256)
fn l2_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if g >= p.groups { return; }
    let base = g * p.width;
    let inv = inverseSqrt(sum_sq(base, lid) + p.eps);
    for (var i = lid; i < p.width; i += 256u) {
        out[base + i] = a[base + i] * inv;
    }
}

// (x − mean) / sqrt(var + eps) · w + b, `z` the bias.
@compute @workgroup_size(256)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let g = wg_index(wid, nwg);
    if g >= p.groups { return; }
    let base = g * p.width;
    var s = 0.0;
    for (var i = lid; i < p.width; i += 256u) { s += a[base + i]; }
    let mean = reduce(lid, s) / f32(p.width);
    var v = 0.0;
    for (var i = lid; i < p.width; i += 256u) {
        let d = a[base + i] - mean;
        v += d * d;
    }
    let inv = inverseSqrt(reduce(lid, v) / f32(p.width) + p.eps);
    for (var i = lid; i < p.width; i += 256u) {
        out[base + i] = (a[base + i] - mean) * inv * w[i] + z[i];
    }
}
